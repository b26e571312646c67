package peek

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// goHello records the first flight of a crypto/tls client asking for name:
// a real ClientHello, in one record, as the client writes it.
func goHello(t testing.TB, name string) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go tls.Client(c, &tls.Config{ServerName: name, NextProtos: []string{"h2"}}).Handshake()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(s, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(s, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

// rec returns one TLS record.
func rec(typ byte, vers uint16, frag ...byte) []byte {
	return append([]byte{typ, byte(vers >> 8), byte(vers), byte(len(frag) >> 8), byte(len(frag))}, frag...)
}

// Records a client may send before its hello, and some it may not.
var (
	warning     = rec(21, 0x0301, 1, 112) // warning unrecognized_name
	userCancel  = rec(21, 0x0303, 1, 90)  // warning user_canceled
	ccs         = rec(20, 0x0303, 1)
	appData     = rec(23, 0x0303, 'h', 'i')
	ccsBadBody  = rec(20, 0x0303, 2)
	alertLong   = rec(21, 0x0303, 1, 0, 0)
	alertVers0  = rec(21, 0x0000, 1, 90) // crypto/tls takes any version below 0x1000 first
	serverHello = rec(22, 0x0303, 2, 0, 0, 1, 0)
)

// feed writes in to c in writes of chunk bytes (all at once for 0), in the
// background, and leaves c open: a client that waits for an answer.
func feed(c net.Conn, in []byte, chunk int) {
	go func() {
		for len(in) > 0 {
			n := len(in)
			if chunk > 0 {
				n = min(chunk, n)
			}
			if _, err := c.Write(in[:n]); err != nil {
				return
			}
			in = in[n:]
		}
	}()
}

// TestPeekTLSLeadingRecords sends change_cipher_spec and alert records
// before a real ClientHello. TLS is known by its record layer, not by a
// first byte of 22: the name must be found behind them, or the stream
// refused as a malformed hello, never waved through as unknown.
func TestPeekTLSLeadingRecords(t *testing.T) {
	h := goHello(t, "denied.test")
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name    string
		input   []byte
		chunk   int
		sni     string
		err     error
		version uint16 // Result.Hello.RecordVersion
	}{
		{"plain", h, 0, "denied.test", nil, 0x0301},
		{"warning alert", cat(warning, h), 0, "denied.test", nil, 0x0301},
		{"change_cipher_spec", cat(ccs, h), 0, "denied.test", nil, 0x0301},
		{"ccs then alert, 1-byte writes", cat(ccs, userCancel, h), 1, "denied.test", nil, 0x0301},
		{"alert, 7-byte records", cat(warning, reframe(h, 7)), 3, "denied.test", nil, 0x0301},
		{"four leading records", cat(ccs, warning, userCancel, ccs, h), 0, "denied.test", nil, 0x0301},
		{"hello's record version", cat(rec(21, 0x0303, 1, 0), rec(22, 0x0302, h[5:]...)), 0, "denied.test", nil, 0x0302},
		{"close_notify first", cat(rec(21, 0x0301, 1, 0), h), 0, "denied.test", nil, 0x0301},

		{"five leading records", cat(ccs, warning, ccs, warning, ccs, h), 0, "", ErrMalformedHello, 0x0303},
		{"application data first", cat(appData, h), 0, "", ErrMalformedHello, 0x0303},
		{"application data after alert", cat(warning, appData, h), 0, "", ErrMalformedHello, 0x0301},
		{"server hello first", cat(serverHello, h), 0, "", ErrMalformedHello, 0x0303},
		{"ccs with a bad body", cat(ccsBadBody, h), 0, "", ErrMalformedHello, 0x0303},
		{"alert of three bytes", cat(alertLong, h), 0, "", ErrMalformedHello, 0x0303},
		{"alert in version 0.0", cat(alertVers0, h), 0, "", ErrMalformedHello, 0},
		{"ccs in version 1.3", cat(rec(20, 0x0103, 1), h), 0, "", ErrMalformedHello, 0x0103},
		{"alert inside the hello", cat(rec(22, 0x0301, h[5:105]...), warning, rec(22, 0x0301, h[105:]...)), 0, "", ErrMalformedHello, 0x0301},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, s := testnet.Pair(t)
			feed(c, tc.input, tc.chunk)
			r := Peek(s, deadlines(5*time.Second, 5*time.Second))
			defer Release(&r)
			if r.Protocol != TLS || !errors.Is(r.Err, tc.err) || string(r.Hello.ServerName) != tc.sni {
				t.Fatalf("Peek = %s, %q, %v; want tls, %q, %v", r.Protocol, r.Hello.ServerName, r.Err, tc.sni, tc.err)
			}
			if r.Hello.RecordVersion != tc.version {
				t.Errorf("RecordVersion = %#04x, want %#04x", r.Hello.RecordVersion, tc.version)
			}
			if !bytes.HasPrefix(tc.input, r.Data) || tc.err == nil && !bytes.Equal(r.Data, tc.input) {
				t.Errorf("Peek kept %d bytes, want the %d sent, verbatim", len(r.Data), len(tc.input))
			}
		})
	}
}

// TestPeekHTTPAnyMethod sends requests with methods no list knows: HTTP is
// the shape of the request line, and its Host decides.
func TestPeekHTTPAnyMethod(t *testing.T) {
	tests := []struct {
		name  string
		input string
		chunk int
		host  string
		err   error
	}{
		{"GET", "GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "denied.test", nil},
		{"PROPFIND", "PROPFIND /dav HTTP/1.1\r\nHost: denied.test\r\nDepth: 1\r\n\r\n", 0, "denied.test", nil},
		{"MKCOL, 1-byte writes", "MKCOL /new HTTP/1.1\r\nHost: denied.test:8080\r\n\r\n", 1, "denied.test", nil},
		{"made up", "FOO / HTTP/1.1\r\nHost: denied.test\r\n\r\n", 2, "denied.test", nil},
		{"lower case", "get / HTTP/1.0\r\nHost: denied.test\r\n\r\n", 0, "denied.test", nil},
		{"every tchar", "!#$%&'*+-.^_`|~09az / HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "denied.test", nil},
		{"absolute form", "FOO http://denied.test/x HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "denied.test", nil},
		{"M-SEARCH", "M-SEARCH * HTTP/1.1\r\nHost: denied.test:1900\r\n\r\n", 0, "denied.test", nil},
		{"bare LF", "FOO / HTTP/1.1\nHost: denied.test\n\n", 0, "denied.test", nil},
		{"empty lines before", "\r\n\r\nFOO / HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "denied.test", nil},
		{"SSH-like method", "SSH-2.0-x / HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "denied.test", nil},
		{"HTTP/1.0 without Host", "FOO / HTTP/1.0\r\n\r\n", 0, "", nil},
		// Versions nginx reads as HTTP/1.1, or that some server may take:
		// HTTP, refused as malformed (httpHost reads HTTP/D.D only), never
		// relayed as unknown bytes whose Host nobody read.
		{"HTTP/1.01", "GET / HTTP/1.01\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"HTTP/1.10", "GET / HTTP/1.10\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"HTTP/01.1", "GET / HTTP/01.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"lower-case version", "GET / http/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"not quite a version", "GET / HTTP/1.1x\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		// nginx before 1.21.1 serves a target with control bytes.
		{"ctl in target", "GET /a\x01b HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"ctl in target, 1-byte writes", "GET /a\x01b HTTP/1.1\r\nHost: denied.test\r\n\r\n", 1, "", ErrBadHTTP},
		{"two spaces", "FOO  / HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"tab", "FOO\t/ HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"space in target", "FOO /a b HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"two Host lines", "FOO / HTTP/1.1\r\nHost: allowed.test\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"absolute form, other Host", "GET http://allowed.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"absolute form, same Host", "GET http://Denied.test:81/ HTTP/1.1\r\nHost: denied.test:81\r\n\r\n", 0, "Denied.test", nil},
		{"http/0.9 absolute form", "GET http://denied.test/\r\n", 0, "", ErrBadHTTP},
		{"line over 8 KiB", "FOO /" + strings.Repeat("a", 9000) + " HTTP/1.1\r\n", 0, "", ErrHTTPLineTooLong},
		// Netty skips every control or whitespace byte before a request
		// line, and takes any word/D.D for a version: such requests are
		// refused, never relayed as unknown bytes whose Host nobody read.
		{"space before", " GET /x HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"tab before, 1-byte writes", "\tGET /x HTTP/1.1\r\nHost: denied.test\r\n\r\n", 1, "", ErrBadHTTP},
		{"NUL before", "\x00GET /x HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"control bytes before", "\x01\x13\x7f\x85 POST * HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"another protocol's version", "GET /x FOO/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"a tab after the method, behind a NUL", "\x00GET\t/ HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		// Decided as its UTS-46 form, written on as another Punycode.
		{"a non-ASCII Host", "GET / HTTP/1.1\r\nHost: BÜCHER.test\r\n\r\n", 0, "", ErrBadHTTP},
		// Jetty skips ':' before a request line.
		{"a colon before", ":GET /x HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"colons and a line end before", ":\r\n:GET /x HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"a long method behind a control byte", "\x01" + strings.Repeat("A", 17) + " / HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"two spaces after the method, behind a control byte", "\x01GET  /x HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"HTTP's method, another version, no Host", "GET / FOO/1.1\r\n\r\n", 0, "", ErrBadHTTP},
		{"a Host behind ICAP's version", "PROPFIND /x ICAP/1.0\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"another protocol's version, 1-byte writes", "GET /x RTSP/1.0\r\nhost: denied.test\r\n\r\n", 1, "", ErrBadHTTP},
		// Netty serves these, keeps the connection alive, and serves the
		// next request's Host.
		{"an origin-form target, another version", "FOO / BAR/1.1\r\n\r\n", 0, "", ErrBadHTTP},
		{"an http target, another version", "FOO HTTP://denied.test/ BAR/1.1\r\n\r\n", 0, "", ErrBadHTTP},
		{"a bare word target, another version", "FOO x BAR/1.1\r\n\r\n", 0, "", ErrBadHTTP},
		{"a Host behind a file separator, another version", "OPTIONS * RTSP/1.0\r\n\x1cHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		// nginx before 1.21.1 serves these as HTTP/0.9, from the target's
		// virtual host.
		{"http/0.9 absolute, another word behind", "GET http://denied.test/ x\r\n", 0, "", ErrBadHTTP},
		{"http/0.9 absolute, a control byte behind", "GET http://denied.test/\x01\r\n", 0, "", ErrBadHTTP},
		// Python's http.server, wsgiref and Django's runserver split a
		// request line with str.split(), which also splits on 0x1c-0x1f,
		// 0x85 and 0xa0 (and skips them before it); Netty before 4.1.46
		// split on Java's whitespace.
		{"file separators between the parts", "GET\x1c/\x1cHTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"no-break spaces between the parts", "GET\xa0/\xa0HTTP/1.0\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"a no-break space before", "\xa0GET / HTTP/1.0\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
		{"a request behind RTSP's", "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\nGET / HTTP/1.1\r\nHost: denied.test\r\n\r\n", 0, "", ErrBadHTTP},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, s := testnet.Pair(t)
			feed(c, []byte(tc.input), tc.chunk)
			r := Peek(s, deadlines(5*time.Second, 5*time.Second))
			defer Release(&r)
			if r.Protocol != HTTP || !errors.Is(r.Err, tc.err) || r.Host != tc.host {
				t.Fatalf("Peek(%.40q) = %s, %q, %v; want http, %q, %v", tc.input, r.Protocol, r.Host, r.Err, tc.host, tc.err)
			}
			if tc.err == nil && string(r.Data) != tc.input {
				t.Errorf("Peek kept %d bytes, want the %d sent", len(r.Data), len(tc.input))
			}
		})
	}
}

// TestPeekNotHTTP checks that client-first protocols that are not HTTP are
// told apart as soon as their bytes cannot start a request line: the
// connection stays open and the deadline is far, so a Peek that waited
// would end in a timeout error, not in a clean answer.
func TestPeekNotHTTP(t *testing.T) {
	tests := []struct {
		name     string
		input    string
		protocol string
	}{
		{"redis array", "*1\r\n$4\r\nPING\r\n", Unknown},
		{"redis inline", "PING\r\n", Unknown},
		{"memcached", "get foo\r\n", Unknown},
		{"smtp-style", "EHLO x\r\n", Unknown},
		{"postgres startup", "\x00\x00\x00\x08\x04\xd2\x16\x2f", Unknown},
		{"socks5", "\x05", Unknown},
		{"ssh", "SSH-2.0-OpenSSH_9.6\r\n", SSH},
		{"ssh with comment", "SSH-2.0-OpenSSH_9.6 Ubuntu-3ubuntu13\r\n", SSH},
		{"http/0.9", "GET /\r\n", Unknown},
		{"url as a redis key", "SET k http://a.test/\r\n", Unknown},
		{"ctl in a line that is no request", "SET k a\x01b\r\n", Unknown},
		{"no target", "GET  HTTP/1.1\r\n", Unknown},
		{"utf-8 method", "GÉT / HTTP/1.1\r\n", Unknown},
		{"not a record version", "\x15\x41\x42", Unknown},
		// Bytes before a line and other protocols' versions: only what a
		// server could take for a request with a Host waits or is refused.
		{"socks5 greeting", "\x05\x01\x00", Unknown},
		{"control bytes then capitals", "\x05\x01\x00AB\x01", Unknown},
		{"binary after a NUL", "\x00\x00\x00\x10SELECT 1 FROM t", Unknown},
		{"binary, a word and a space", "\x02\x00Ab \x01\x02", Unknown},
		{"RTSP", "DESCRIBE rtsp://cam.test/s RTSP/1.0\r\nCSeq: 1\r\n\r\n", Unknown},
		{"SIP", "OPTIONS sip:a@b.test SIP/2.0\r\nVia: SIP/2.0/TCP c.test\r\nCSeq: 1 OPTIONS\r\n\r\n", Unknown},
		{"RTSP, any target", "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n", Unknown},
		{"RTSP, and its next request", "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\nDESCRIBE rtsp://cam.test/s RTSP/1.0\r\n", Unknown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, s := testnet.Pair(t)
			feed(c, []byte(tc.input), 0)
			r := Peek(s, deadlines(2*time.Second, 2*time.Second))
			defer Release(&r)
			if r.Protocol != tc.protocol || r.Err != nil {
				t.Fatalf("Peek(%q) = %s, %v; want %s at once", tc.input, r.Protocol, r.Err, tc.protocol)
			}
			if other := strings.HasPrefix(tc.name, "RTSP") || strings.HasPrefix(tc.name, "SIP"); r.OtherRequest != other {
				t.Errorf("Peek(%q): OtherRequest %v, want %v", tc.input, r.OtherRequest, other)
			}
		})
	}
}

// TestPeekSlowPrefix stops a client in the middle of what can still become
// a request line or head: when the deadline passes it is a started HTTP
// request that timed out, refused, never unknown and decided by address.
func TestPeekSlowPrefix(t *testing.T) {
	for _, in := range []string{
		"G",
		"\r\n",
		"FOO",
		"FOO /x",
		"PROPFIND / HTTP/1.",
		"MKCOL /a HTTP/1.1\r",
		"GET / HTTP/1.1\r\nHost: deni",
		"SSH-2.0-x / HTTP/1.1\r\nHost: denied.test",
	} {
		t.Run(in, func(t *testing.T) {
			c, s := testnet.Pair(t)
			feed(c, []byte(in), 1)
			r := Peek(s, deadlines(5*time.Second, 300*time.Millisecond))
			defer Release(&r)
			if r.Protocol != HTTP || !errors.Is(r.Err, ErrHTTPTimeout) || string(r.Data) != in {
				t.Errorf("Peek(%q) = %s, %v, %q; want http, ErrHTTPTimeout, all bytes", in, r.Protocol, r.Err, r.Data)
			}
		})
	}
}

// TestPeekProxyHeader: a client's PROXY protocol header, v1 or v2, before
// a request or a hello, is refused: a server that accepts it would take
// its source and read what follows, unread by egressd.
func TestPeekProxyHeader(t *testing.T) {
	for _, in := range []string{
		"PROXY TCP4 192.0.2.1 198.51.100.1 40000 80\r\nGET / HTTP/1.1\r\nHost: denied.test\r\n\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.1 40000 443\r\n\x16\x03\x01\x00\x05",
		"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x01\x9c\x40\x01\xbb",
	} {
		c, s := testnet.Pair(t)
		feed(c, []byte(in), 0)
		r := Peek(s, deadlines(2*time.Second, 2*time.Second))
		if !errors.Is(r.Err, ErrProxyHeader) {
			t.Errorf("Peek(%.30q) = %s, %v; want ErrProxyHeader", in, r.Protocol, r.Err)
		}
		Release(&r)
	}
}

// TestPeekPostgres: PostgreSQL's requests for TLS are read whole, however
// split, and marked as a preamble; a startup message is unknown bytes; a
// request with bytes behind it (before the server could answer) is
// refused.
func TestPeekPostgres(t *testing.T) {
	ssl := "\x00\x00\x00\x08\x04\xd2\x16\x2f"
	gss := "\x00\x00\x00\x08\x04\xd2\x16\x30"
	startup := "\x00\x00\x00\x29\x00\x03\x00\x00user\x00postgres\x00database\x00postgres\x00\x00"
	for _, tc := range []struct {
		name, in string
		chunk    int
		preamble bool
		err      error
	}{
		{"SSLRequest", ssl, 0, true, nil},
		{"SSLRequest in 1-byte writes", ssl, 1, true, nil},
		{"GSSENCRequest", gss, 0, true, nil},
		{"startup message", startup, 0, false, nil},
		{"SSLRequest and a hello behind it", ssl + "\x16\x03\x01\x00\x05\x01", 0, false, ErrPipelined},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s := testnet.Pair(t)
			feed(c, []byte(tc.in), tc.chunk)
			r := Peek(s, deadlines(2*time.Second, 2*time.Second))
			defer Release(&r)
			if r.Protocol != Unknown || r.Preamble != tc.preamble || !errors.Is(r.Err, tc.err) {
				t.Errorf("Peek = %s, preamble %v, %v; want unknown, %v, %v", r.Protocol, r.Preamble, r.Err, tc.preamble, tc.err)
			}
		})
	}
}

// TestJunkRequest: a request line behind bytes Netty skips is found
// however the client's bytes are cut, also when the first cut is those
// bytes alone (peek calls that unknown at once); bytes that cannot become
// one are let be, at once.
func TestJunkRequest(t *testing.T) {
	for _, tc := range []struct {
		name  string
		parts []string
		found bool
	}{
		{"control bytes, then the request", []string{"\x05\x01\x00", "GET /x HTTP/1.1\r\nHost: denied.test\r\n\r\n"}, true},
		{"one byte at a time", strings.Split("\x00\x00POST * HTTP/1.1\r\n", ""), true},
		{"absolute form", []string{"\x01", "GET htt", "ps://denied.test/ HTTP/1.1\r\n"}, true},
		{"a SOCKS5 exchange", []string{"\x05\x01\x00", "\x05\x01\x00\x03\x0bexample.com\x01\xbb"}, false},
		{"a text command behind a length", []string{"\x00\x00\x00\x0c", "SET key value"}, false},
		{"a word, not a method", []string{"\x01", "Hello world"}, false},
		{"no junk first", []string{"GET /x HTTP/1.1\r\n"}, false},
		{"a scheme that is not http", []string{"\x01", "GET ftp://x/ HTTP/1.1\r\n"}, false},
		{"a tab after the method", []string{"\x01", "GET\t/x HTTP/1.1\r\n"}, true},
		{"a colon, then the request", []string{":", "GET /x HTTP/1.1\r\n"}, true},
		{"a long method", []string{"\x01", strings.Repeat("A", 40) + " / HTTP/1.1\r\n"}, true},
		{"a long run of spaces", []string{"\x05", "GET" + strings.Repeat(" ", 100) + "/ HTTP/1.1\r\n"}, true},
		{"https, split", []string{"\x00", "GET HtTpS:", "//denied.test/ HTTP/1.1\r\n"}, true},
		// "" stands for the server's answer (Stop): a SOCKS5 tunnel's
		// request after the proxy answered is the tunnel's own.
		{"a request after the server answered", []string{"\x05\x01\x00", "", "\x05\x01\x00\x01\x0a\x00\x00\x05\x00\x50", "", "GET / HTTP/1.1\r\n"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var j JunkRequest
			found := false
			for _, p := range tc.parts {
				if p == "" {
					j.Stop()
				}
				found = found || j.Feed([]byte(p))
			}
			if found != tc.found {
				t.Errorf("found %v, want %v", found, tc.found)
			}
		})
	}
}
