package peek

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	h, err := os.ReadFile("../clienthello/testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var hx []byte
	for _, line := range bytes.Split(h, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("#")) {
			hx = append(hx, bytes.TrimSpace(line)...)
		}
	}
	b, err := hex.DecodeString(string(hx))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reframe splits a single-record hello into records of at most n bytes.
func reframe(rec []byte, n int) []byte {
	hdr, body := rec[:5], rec[5:]
	var out []byte
	for len(body) > 0 {
		k := min(n, len(body))
		out = append(out, hdr[0], hdr[1], hdr[2], byte(k>>8), byte(k))
		out = append(out, body[:k]...)
		body = body[k:]
	}
	return out
}

func deadlines(first, complete time.Duration) Deadlines {
	now := time.Now()
	return Deadlines{FirstBytes: now.Add(first), Complete: now.Add(complete)}
}

// TestPeek writes each input to a real socket in chunks (so the hello
// arrives over many segments and reads) and checks the classification and
// that every byte is kept for forwarding.
func TestPeek(t *testing.T) {
	hello := fixture(t, "go-default.hex")
	tests := []struct {
		name     string
		input    []byte
		chunk    int // write size; 0 = all at once
		protocol string
		sni      string
		host     string
		err      error
	}{
		{"tls one write", hello, 0, TLS, "example.com", "", nil},
		{"tls 1-byte writes", hello, 1, TLS, "example.com", "", nil},
		{"tls 1-byte records", reframe(hello, 1), 97, TLS, "example.com", "", nil},
		{"tls 7-byte records", reframe(hello, 7), 0, TLS, "example.com", "", nil},
		{"http", []byte("GET /x HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n"), 3, HTTP, "", "Example.COM", nil},
		{"http absolute", []byte("GET http://a.test/ HTTP/1.1\r\nHost: A.TEST:80\r\n\r\n"), 0, HTTP, "", "a.test", nil},
		{"http v6 host", []byte("GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n"), 0, HTTP, "", "2001:db8::1", nil},
		{"http bad", []byte("GET / HTTP/1.1\r\nHost a\r\n\r\n"), 0, HTTP, "", "", ErrBadHTTP},
		{"ssh", []byte("SSH-2.0-OpenSSH_9.2\r\n"), 1, SSH, "", "", nil},
		{"unknown", []byte("\x00\x01\x02garbage"), 0, Unknown, "", "", nil},
		{"any method", []byte("GETX / HTTP/1.1\r\nHost: a.test\r\n\r\n"), 0, HTTP, "", "a.test", nil},
		{"almost http", []byte("GET\x00/ HTTP/1.1\r\n\r\n"), 0, Unknown, "", "", nil},
		{"malformed tls", []byte{0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00}, 0, TLS, "", "", ErrMalformedHello},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, s := testnet.Pair(t)
			go func() {
				in := tc.input
				for len(in) > 0 {
					n := len(in)
					if tc.chunk > 0 {
						n = min(tc.chunk, n)
					}
					if _, err := c.Write(in[:n]); err != nil {
						return
					}
					in = in[n:]
				}
			}()
			r := Peek(s, deadlines(2*time.Second, 5*time.Second))
			if r.Protocol != tc.protocol || !errors.Is(r.Err, tc.err) {
				t.Fatalf("Peek = %s, %v; want %s, %v", r.Protocol, r.Err, tc.protocol, tc.err)
			}
			if string(r.Hello.ServerName) != tc.sni || r.Host != tc.host {
				t.Errorf("Peek name = %q/%q, want %q/%q", r.Hello.ServerName, r.Host, tc.sni, tc.host)
			}
			if tc.err == nil && tc.protocol != Unknown && tc.protocol != SSH && !bytes.Equal(r.Data, tc.input) {
				t.Errorf("Peek kept %d bytes, want the %d sent", len(r.Data), len(tc.input))
			}
			if !bytes.HasPrefix(tc.input, r.Data) {
				t.Errorf("Peek Data is not a prefix of what was sent")
			}
			Release(&r)
		})
	}
}

// TestPeekHelloViews checks that r.Hello, which views the bytes it was parsed
// from, stays intact until Release even for a hello reassembled from several
// records in a pooled buffer, while other connections are peeked at, and
// that Release clears the views rather than leave them on a reused buffer.
func TestPeekHelloViews(t *testing.T) {
	tests := []struct {
		name   string
		framed func([]byte) []byte
	}{
		{"one record", func(b []byte) []byte { return b }},
		{"7-byte records", func(b []byte) []byte { return reframe(b, 7) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			peekHello := func(name string) Result {
				c, s := testnet.Pair(t)
				go c.Write(tc.framed(fixture(t, name)))
				r := Peek(s, deadlines(2*time.Second, 5*time.Second))
				if !r.HelloOK {
					t.Fatalf("Peek(%s) = %s, %v; want a hello", name, r.Protocol, r.Err)
				}
				return r
			}
			first := peekHello("go-default.hex") // example.com, h2 and http/1.1
			for range 3 {
				other := peekHello("go-tls12.hex") // api.example.net, no ALPN
				Release(&other)
			}
			if got, alpn := string(first.Hello.ServerName), first.Hello.ALPN.Strings(); got != "example.com" ||
				len(alpn) != 2 || alpn[0] != "h2" || alpn[1] != "http/1.1" {
				t.Errorf("first hello now says %q, ALPN %q; want example.com, [h2 http/1.1]", got, alpn)
			}
			Release(&first)
			if first.Hello.ServerName != nil || first.Hello.ALPN != nil || first.Data != nil {
				t.Errorf("after Release: ServerName %q, ALPN %q, %d bytes of Data; want all nil",
					first.Hello.ServerName, first.Hello.ALPN, len(first.Data))
			}
			Release(&first) // the gateway may release twice: a deferred call and an early one
		})
	}
}

// TestPeekSilentAndStalled covers the two timeouts: nothing at all is
// server-first; a hello that starts and stalls is an error.
func TestPeekSilentAndStalled(t *testing.T) {
	t.Run("silent", func(t *testing.T) {
		_, s := testnet.Pair(t)
		r := Peek(s, deadlines(50*time.Millisecond, time.Second))
		if r.Protocol != ServerFirst || r.Err != nil || len(r.Data) != 0 {
			t.Errorf("Peek = %+v, want server-first without error", r)
		}
	})
	t.Run("closed", func(t *testing.T) {
		c, s := testnet.Pair(t)
		c.Close()
		r := Peek(s, deadlines(time.Second, time.Second))
		if r.Protocol != ServerFirst || !errors.Is(r.Err, io.EOF) {
			t.Errorf("Peek = %+v, want server-first with EOF", r)
		}
	})
	t.Run("stalled hello", func(t *testing.T) {
		c, s := testnet.Pair(t)
		hello := fixture(t, "go-default.hex")
		c.Write(hello[:100])
		r := Peek(s, deadlines(time.Second, 200*time.Millisecond))
		if r.Protocol != TLS || !errors.Is(r.Err, ErrHelloTimeout) || len(r.Data) != 100 {
			t.Errorf("Peek = %s %v (%d bytes), want tls, ErrHelloTimeout, 100 bytes", r.Protocol, r.Err, len(r.Data))
		}
	})
	t.Run("oversized http head", func(t *testing.T) {
		c, s := testnet.Pair(t)
		go c.Write(append([]byte("GET / HTTP/1.1\r\nX: "), bytes.Repeat([]byte("a"), 20000)...))
		r := Peek(s, deadlines(time.Second, 5*time.Second))
		if r.Protocol != HTTP || r.Err == nil {
			t.Errorf("Peek = %s %v, want http with an error", r.Protocol, r.Err)
		}
	})
}
