package proxyheader

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/egressd/egressd/internal/testnet"
)

// v2Header builds a v2 header with go-proxyproto's writer.
func v2Header(t testing.TB, cmd proxyproto.ProtocolVersionAndCommand, src, dst string, tlvs ...proxyproto.TLV) []byte {
	s, d := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst))
	h := proxyproto.HeaderProxyFromAddrs(2, s, d)
	h.Command = cmd
	if len(tlvs) > 0 {
		if err := h.SetTLVs(tlvs); err != nil {
			t.Fatal(err)
		}
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRead(t *testing.T) {
	long := proxyproto.TLV{Type: proxyproto.PP2_TYPE_NOOP, Value: make([]byte, 300)}
	tests := []struct {
		name    string
		writes  [][]byte // each write is one TCP segment, give or take
		wantSrc string   // "" : ok false
		wantErr bool
	}{
		{"v1 tcp4", [][]byte{[]byte("PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n")}, "192.0.2.7:40000", false},
		{"v1 tcp6", [][]byte{[]byte("PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n")}, "[2001:db8::7]:40000", false},
		{"v1 unknown", [][]byte{[]byte("PROXY UNKNOWN\r\n")}, "", false},
		{"v1 split", [][]byte{[]byte("PROXY TCP4 192.0"), []byte(".2.7 198.51.100.1 400"), []byte("00 443\r\n")}, "192.0.2.7:40000", false},
		{"v2 tcp4", [][]byte{v2Header(t, proxyproto.PROXY, "192.0.2.9:5555", "198.51.100.1:443")}, "192.0.2.9:5555", false},
		{"v2 tcp6", [][]byte{v2Header(t, proxyproto.PROXY, "[2001:db8::9]:5555", "[2001:db8::1]:443")}, "[2001:db8::9]:5555", false},
		{"v2 local", [][]byte{v2Header(t, proxyproto.LOCAL, "192.0.2.9:5555", "198.51.100.1:443")}, "", false},
		{"v2 with a long TLV", [][]byte{v2Header(t, proxyproto.PROXY, "192.0.2.9:5555", "198.51.100.1:443", long)}, "192.0.2.9:5555", false},
		{"v2 split in the signature", func() [][]byte {
			h := v2Header(t, proxyproto.PROXY, "192.0.2.9:5555", "198.51.100.1:443")
			return [][]byte{h[:5], h[5:20], h[20:]}
		}(), "192.0.2.9:5555", false},
		{"no header: TLS", [][]byte{{0x16, 0x03, 0x01, 0x00, 0x10}}, "", true},
		{"no header: HTTP", [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n")}, "", true},
		{"v1 garbage address", [][]byte{[]byte("PROXY TCP4 not-an-ip 198.51.100.1 1 2\r\n")}, "", true},
		{"v1 without CRLF", [][]byte{[]byte("PROXY TCP4 192.0.2.7 198.51.100.1 40000 443" + string(make([]byte, 80)))}, "", true},
		{"v2 bad version", func() [][]byte {
			h := v2Header(t, proxyproto.PROXY, "192.0.2.9:5555", "198.51.100.1:443")
			h[12] = 0x31
			return [][]byte{h}
		}(), "", true},
		{"v2 too long", [][]byte{append(append([]byte{}, sigV2...), 0x21, 0x11, 0xff, 0xff)}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := testnet.Pair(t)
			client.SetNoDelay(true)
			payload := []byte("\x16\x03\x01payload after the header")
			go func() {
				for _, w := range tt.writes {
					client.Write(w)
					time.Sleep(20 * time.Millisecond)
				}
				client.Write(payload)
			}()
			src, ok, err := Read(server, time.Now().Add(5*time.Second))
			if (err != nil) != tt.wantErr {
				t.Fatalf("Read = %v, %v, %v; want error %v", src, ok, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if tt.wantSrc == "" && ok || tt.wantSrc != "" && (!ok || src != netip.MustParseAddrPort(tt.wantSrc)) {
				t.Errorf("Read = %v, %v; want %q", src, ok, tt.wantSrc)
			}
			// Not one byte past the header was consumed.
			got := make([]byte, len(payload))
			server.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(server, got); err != nil || string(got) != string(payload) {
				t.Errorf("after the header read %q, %v; want %q", got, err, payload)
			}
		})
	}
}

func TestReadSilentClient(t *testing.T) {
	_, server := testnet.Pair(t)
	_, _, err := Read(server, time.Now().Add(50*time.Millisecond))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read(silent) = %v, want a deadline error", err)
	}
}

func TestReadEOF(t *testing.T) {
	client, server := testnet.Pair(t)
	client.Write([]byte("PROXY TCP4"))
	client.Close()
	// The truncated header stays in the socket, so Read waits for the rest
	// until the deadline.
	if _, _, err := Read(server, time.Now().Add(200*time.Millisecond)); err == nil {
		t.Errorf("Read(truncated, closed) = nil error")
	}
}
