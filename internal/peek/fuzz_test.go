package peek

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// FuzzPeek checks that identification cannot be walked around: whenever
// the client's bytes hold a ClientHello that crypto/tls reads (behind only
// records a TLS stack may skip), or an HTTP request with a Host that
// net/http reads, Peek returns that very name, or an error, which the
// gateway refuses. Never unknown, server-first or ssh with the name
// hidden. The bytes go through net.Pipe in writes whose sizes cuts gives,
// so every split point is a possible read boundary; the writer then
// closes, so nothing waits for a deadline.
//
//	go test -run=NONE -fuzz=FuzzPeek -fuzztime=60s -fuzzminimizetime=5s ./internal/peek/
func FuzzPeek(f *testing.F) {
	for _, name := range []string{"go-tls12.hex", "openssl.hex"} {
		h := fixture(f, name)
		for _, lead := range [][]byte{nil, warning, ccs, bytes.Join([][]byte{ccs, warning, userCancel}, nil), appData} {
			f.Add(append(bytes.Clone(lead), h...), []byte{0})
			f.Add(append(bytes.Clone(lead), reframe(h, 7)...), []byte{2, 200, 5})
		}
	}
	for _, m := range []string{"GET", "PROPFIND", "MKCOL", "FOO", "get", "M-SEARCH", "SSH-2.0-x"} {
		f.Add([]byte(m+" / HTTP/1.1\r\nHost: denied.test\r\n\r\n"), []byte{3})
		f.Add([]byte(m+" http://denied.test:81/ HTTP/1.0\nhost: other.test\n\n"), []byte{0, 9})
	}
	f.Add([]byte("\r\nPING\r\n"), []byte{})
	f.Add([]byte("SSH-2.0-OpenSSH_9.6\r\n"), []byte{1})
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		c, s := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer c.Close()
			for i, in := 0, stream; len(in) > 0; i++ {
				n := len(in)
				if len(cuts) > 0 {
					n = min(n, 1+int(cuts[i%len(cuts)]))
				}
				if _, err := c.Write(in[:n]); err != nil {
					return
				}
				in = in[n:]
			}
		}()
		now := time.Now()
		r := Peek(s, Deadlines{FirstBytes: now.Add(10 * time.Second), Complete: now.Add(10 * time.Second)})
		s.Close()
		<-done
		defer Release(&r)
		if !bytes.HasPrefix(stream, r.Data) {
			t.Fatalf("Data is not a prefix of the stream")
		}
		if r.Err != nil {
			return // refused
		}
		if name, ok := tlsName(stream); ok && (r.Protocol != TLS || string(r.Hello.ServerName) != name) {
			t.Fatalf("crypto/tls reads a hello for %q; Peek = %s, %q", name, r.Protocol, r.Hello.ServerName)
		}
		if host, ok := httpRequestHost(stream); ok && (r.Protocol != HTTP || r.Host != host) {
			t.Fatalf("net/http reads a request for %q; Peek = %s, %q", host, r.Protocol, r.Host)
		}
	})
}

// tlsName is the server name a crypto/tls server reads from stream. Some
// stacks also drop change_cipher_spec records before the hello, which
// crypto/tls refuses; the oracle drops them first to stand for those.
func tlsName(stream []byte) (name string, ok bool) {
	errStop := errors.New("stop after the hello")
	cfg := &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		name, ok = h.ServerName, true
		return nil, errStop
	}}
	tls.Server(&replayConn{in: dropLeadingCCS(stream)}, cfg).Handshake()
	return name, ok
}

// dropLeadingCCS returns stream without the change_cipher_spec records
// among the change_cipher_spec and alert records it starts with: those that
// a record layer like crypto/tls's reads (a version below 0x1000) and that
// are well formed (the single byte 1).
func dropLeadingCCS(stream []byte) []byte {
	var out []byte
	for len(stream) >= 5 && (stream[0] == 20 || stream[0] == 21) && stream[1] < 0x10 {
		n := 5 + (int(stream[3])<<8 | int(stream[4]))
		if n > len(stream) {
			break
		}
		if stream[0] == 20 && (n != 6 || stream[5] != 1) {
			break
		}
		if stream[0] == 21 {
			out = append(out, stream[:n]...)
		}
		stream = stream[n:]
	}
	return append(out, stream...)
}

// httpRequestHost is the Host, without port, of the request net/http reads
// from stream, after the empty lines a server may skip (RFC 9112 §2.2).
func httpRequestHost(stream []byte) (host string, ok bool) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(bytes.TrimLeft(stream, "\r\n"))))
	if err != nil || req.Host == "" {
		return "", false
	}
	host = req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	return host, true
}

// replayConn serves in to reads, then io.EOF, and drops what is written:
// one flight of a crypto/tls server against fixed bytes.
type replayConn struct{ in []byte }

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *replayConn) Close() error                     { return nil }
func (c *replayConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *replayConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *replayConn) SetDeadline(time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzRequestLineCuts checks that the scans peekText, peekHTTP and
// peekOther resume after each read (lineScan, headScan) answer as the
// readings of the whole buffer they replaced did (requestLineWhole,
// headEndWhole, the code before them), for any bytes read in pieces of
// any sizes (cuts, as FuzzPeek's): at every read, a CRLF or a blank line
// split between reads included, and also after an answer other than
// linePrefix, where peekText stops reading. The head's end is sought, as
// peekHTTP does, once the request line has ended.
//
//	go test -run=NONE -fuzz=FuzzRequestLineCuts -fuzztime=60s ./internal/peek/
func FuzzRequestLineCuts(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"\r\n\nGET http://a.test/ HTTP/1.0\nHost: b.test\n\n",
		"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n",
		"GET /a\x01b HTTP/1.1\r\n\r\n",
		" \tGET http://a.test/ HTTP/1.1\r\n\r\n",
		"\x01\x02GET / HTTP/1.1\r\n",
		"GET / HTTP/1.1\r\nA: \r\r\n\r\r\n\r\n",
		"SSH-2.0-x\r\n",
	} {
		f.Add([]byte(s), []byte{0})
		f.Add([]byte(s), []byte{2, 0, 7})
	}
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		var line lineScan
		var head headScan
		lf := -1 // the request line's LF once found: the head is sought
		for n, i := 0, 0; n < len(stream); i++ {
			k := len(stream) - n
			if len(cuts) > 0 {
				k = min(k, 1+int(cuts[i%len(cuts)]))
			}
			n += k
			buf := stream[:n]
			st, start, l := line.requestLine(buf)
			wst, wstart, wl := requestLineWhole(buf)
			if st != wst || start != wstart || l != wl {
				t.Fatalf("requestLine(%q) = %d, %d, %d; whole-buffer reading: %d, %d, %d (reads %v)",
					buf, st, start, l, wst, wstart, wl, cuts)
			}
			if lf < 0 && (st == lineHTTP || st == lineOther) {
				lf, head = l, headScan{lf: l, next: l + 1}
			}
			if lf < 0 {
				continue
			}
			if got, want := head.end(buf), headEndWhole(buf, lf); got != want {
				t.Fatalf("headScan.end(%q) = %d; whole-buffer search: %d (reads %v)", buf, got, want, cuts)
			}
		}
	})
}

// requestLineWhole, junkLineWhole and headEndWhole are requestLine,
// junkLine and headEnd as they were before lineScan and headScan, reading
// the whole buffer at each call: the references FuzzRequestLineCuts holds
// the scans to.
func requestLineWhole(buf []byte) (st lineState, start, lf int) {
	i := 0
	for i < len(buf) && (buf[i] == '\r' || buf[i] == '\n') {
		i++
	}
	if i < len(buf) && isJunk(buf[i]) {
		return junkLineWhole(buf, i), i, -1
	}
	start = i
	for i < len(buf) && isTchar(buf[i]) {
		i++
	}
	switch {
	case i == len(buf):
		return linePrefix, start, -1
	case i == start || !isSep(buf[i]):
		return lineNot, start, -1
	}
	rest := buf[i:] // the separator after the method, the target, the version
	n := bytes.IndexByte(rest, '\n')
	if n >= 0 {
		rest = rest[:n]
	}
	if n < 0 {
		// Control bytes do not end the line's chances: nginx before
		// 1.21.1 served requests with them in the target, so what decides
		// is the line's end, once it comes (within maxRequestLine and
		// client_hello, as for any line).
		return linePrefix, start, -1
	}
	// What the whole line says is wholeLine's, as the scan asks it: the
	// scan's part under test is finding the line, not reading it.
	switch st := wholeLine(rest); st {
	case lineHTTP, lineOther:
		return st, start, i + n
	default:
		return st, start, -1
	}
}

func junkLineWhole(buf []byte, i int) lineState {
	var j JunkRequest
	switch {
	case j.Feed(buf[i:]):
		return lineBad
	case j.st == junkDone:
		return lineNot
	case j.st == junkSkip && !whitespace(buf[i:]):
		return lineNot // all junk so far, not all whitespace
	}
	return linePrefix
}

func headEndWhole(buf []byte, lf int) int {
	for i := lf; ; {
		rest := buf[i+1:]
		switch {
		case len(rest) >= 1 && rest[0] == '\n':
			return i + 2
		case len(rest) >= 2 && rest[0] == '\r' && rest[1] == '\n':
			return i + 3
		}
		j := bytes.IndexByte(rest, '\n')
		if j < 0 {
			return -1
		}
		i += 1 + j
	}
}
