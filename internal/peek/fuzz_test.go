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
