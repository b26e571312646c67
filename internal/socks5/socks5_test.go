package socks5

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestReadGreeting(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want []byte
		err  error
	}{
		{"no auth", []byte{5, 1, 0}, []byte{0}, nil},
		{"both", []byte{5, 2, 0, 2}, []byte{0, 2}, nil},
		{"socks4", []byte{4, 1, 0, 80}, nil, ErrVersion},
		{"no methods", []byte{5, 0}, nil, ErrNoMethods},
		{"cut", []byte{5, 3, 0}, nil, io.ErrUnexpectedEOF},
		{"empty", nil, nil, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		got, err := ReadGreeting(bytes.NewReader(tt.in))
		if !errors.Is(err, tt.err) || !bytes.Equal(got, tt.want) {
			t.Errorf("%s: ReadGreeting(%x) = %x, %v; want %x, %v", tt.name, tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestReadUserPass(t *testing.T) {
	u, p, err := ReadUserPass(bytes.NewReader([]byte("\x01\x09ci-runner\x06s3cret")))
	if err != nil || u != "ci-runner" || p != "s3cret" {
		t.Errorf("ReadUserPass = %q, %q, %v", u, p, err)
	}
	if _, _, err := ReadUserPass(bytes.NewReader([]byte("\x05\x01a\x01b"))); !errors.Is(err, ErrAuthVersion) {
		t.Errorf("ReadUserPass(version 5) = %v, want ErrAuthVersion", err)
	}
	if _, _, err := ReadUserPass(bytes.NewReader([]byte("\x01\x09ci"))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadUserPass(cut) = %v, want ErrUnexpectedEOF", err)
	}
	// Empty user and password are legal on the wire; authentication refuses them.
	if u, p, err := ReadUserPass(bytes.NewReader([]byte("\x01\x00\x00"))); err != nil || u != "" || p != "" {
		t.Errorf("ReadUserPass(empty) = %q, %q, %v", u, p, err)
	}
}

func TestReadRequest(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want Request
		err  error
	}{
		{"ipv4", []byte{5, 1, 0, 1, 198, 51, 100, 7, 1, 187}, Request{Cmd: CmdConnect, Addr: netip.MustParseAddr("198.51.100.7"), Port: 443}, nil},
		{"ipv6", append(append([]byte{5, 1, 0, 4}, netip.MustParseAddr("2001:db8::1").AsSlice()...), 0, 22),
			Request{Cmd: CmdConnect, Addr: netip.MustParseAddr("2001:db8::1"), Port: 22}, nil},
		{"domain", append([]byte{5, 1, 0, 3, 11}, "example.com\x01\xbb"...), Request{Cmd: CmdConnect, Domain: "example.com", Port: 443}, nil},
		{"bind", []byte{5, 2, 0, 1, 0, 0, 0, 0, 0, 80}, Request{Cmd: CmdBind, Addr: netip.MustParseAddr("0.0.0.0"), Port: 80}, nil},
		{"udp associate", []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 80}, Request{Cmd: CmdUDPAssociate, Addr: netip.MustParseAddr("0.0.0.0"), Port: 80}, nil},
		{"bad version", []byte{4, 1, 0, 1, 1, 2, 3, 4, 0, 80}, Request{}, ErrVersion},
		{"reserved", []byte{5, 1, 1, 1, 1, 2, 3, 4, 0, 80}, Request{}, ErrReserved},
		{"atyp", []byte{5, 1, 0, 9, 1, 2, 3, 4, 0, 80}, Request{}, ErrAddrType},
		{"empty domain", []byte{5, 1, 0, 3, 0, 0, 80}, Request{}, ErrEmptyDomain},
		{"port 0", []byte{5, 1, 0, 1, 1, 2, 3, 4, 0, 0}, Request{}, ErrZeroPort},
		{"cut address", []byte{5, 1, 0, 1, 1, 2}, Request{}, io.ErrUnexpectedEOF},
		{"cut domain", []byte{5, 1, 0, 3, 200, 'a'}, Request{}, io.ErrUnexpectedEOF},
		{"cut port", []byte{5, 1, 0, 1, 1, 2, 3, 4, 0}, Request{}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		got, err := ReadRequest(bytes.NewReader(tt.in))
		if !errors.Is(err, tt.err) {
			t.Errorf("%s: ReadRequest(%x) error = %v, want %v", tt.name, tt.in, err, tt.err)
		}
		if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("%s: ReadRequest(%x) (-want +got):\n%s", tt.name, tt.in, diff)
		}
	}
}

func TestWriteReply(t *testing.T) {
	var b bytes.Buffer
	WriteReply(&b, ReplySucceeded, netip.MustParseAddrPort("198.51.100.1:40000"))
	if want := []byte{5, 0, 0, 1, 198, 51, 100, 1, 0x9c, 0x40}; !bytes.Equal(b.Bytes(), want) {
		t.Errorf("WriteReply = %x, want %x", b.Bytes(), want)
	}
	b.Reset()
	WriteReply(&b, ReplyNotAllowed, netip.AddrPort{})
	if want := []byte{5, 2, 0, 1, 0, 0, 0, 0, 0, 0}; !bytes.Equal(b.Bytes(), want) {
		t.Errorf("WriteReply(deny) = %x, want %x", b.Bytes(), want)
	}
	b.Reset()
	WriteReply(&b, ReplySucceeded, netip.MustParseAddrPort("[2001:db8::1]:1"))
	if b.Len() != 22 || b.Bytes()[3] != atypIPv6 {
		t.Errorf("WriteReply(IPv6) = %x", b.Bytes())
	}
}

func TestAppendRequestRoundTrip(t *testing.T) {
	for _, q := range []Request{
		{Cmd: CmdConnect, Domain: "a.example", Port: 443},
		{Cmd: CmdConnect, Addr: netip.MustParseAddr("198.51.100.7"), Port: 80},
		{Cmd: CmdBind, Addr: netip.MustParseAddr("2001:db8::7"), Port: 65535},
		{Cmd: CmdConnect, Domain: strings.Repeat("x", 255), Port: 1},
	} {
		got, err := ReadRequest(bytes.NewReader(AppendRequest(nil, q)))
		if err != nil || got != q {
			t.Errorf("ReadRequest(AppendRequest(%+v)) = %+v, %v", q, got, err)
		}
	}
}
