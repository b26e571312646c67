package peek

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"
)

// trickleConn serves its bytes one per Read, as a client that sends
// one-byte segments, then io.EOF.
type trickleConn struct{ replayConn }

func (c *trickleConn) Read(p []byte) (int, error) { return c.replayConn.Read(p[:min(len(p), 1)]) }

// peekWork runs Peek on in, a byte per read, and returns its result (Data
// dropped) and how many bytes the scans for a request line and a head's
// end examined in all.
func peekWork(in []byte) (r Result, work int) {
	scanned = func(n int) { work += n }
	defer func() { scanned = nil }()
	now := time.Now()
	r = Peek(&trickleConn{replayConn{in: in}}, Deadlines{FirstBytes: now.Add(time.Minute), Complete: now.Add(time.Minute)})
	Release(&r)
	return r, work
}

// fill returns first, then line repeated while it fits, then last, in
// about n bytes (never more).
func fill(n int, first, line, last string) []byte {
	k := max(0, (n-len(first)-len(last))/len(line))
	return []byte(first + string(bytes.Repeat([]byte(line), k)) + last)
}

// TestPeekLinear holds the peek of a request head to work linear in its
// length when the client sends it a byte at a time: each read's scan for
// the request line's LF (up to maxRequestLine) and for the head's blank
// line (up to maxHTTPHead) must resume where the last one stopped. A
// rescan of the buffer per read costs about n²/2 bytes, and a client that
// paces one-byte segments burns a core per few connections with it. The
// work is counted in bytes examined (the scanned hook), not timed.
func TestPeekLinear(t *testing.T) {
	tests := []struct {
		name string
		n    int // the smaller size; the larger is 2n
		in   func(n int) []byte
		want Result // Data is not compared
	}{
		{"short lines", 8000, func(n int) []byte {
			return fill(n, "GET / HTTP/1.1\r\nHost: a.test\r\n", "X-A: b\r\n", "\r\n")
		}, Result{Protocol: HTTP, Host: "a.test"}},
		{"bare LF lines", 8000, func(n int) []byte {
			return fill(n, "GET / HTTP/1.1\nHost: a.test\n", "X-A: b\n", "\n")
		}, Result{Protocol: HTTP, Host: "a.test"}},
		{"one long header", 8000, func(n int) []byte {
			return fill(n, "GET / HTTP/1.1\r\nHost: a.test\r\nX: ", "y", "\r\n\r\n")
		}, Result{Protocol: HTTP, Host: "a.test"}},
		{"long request line", 4000, func(n int) []byte {
			return fill(n, "GET /", "x", " HTTP/1.1\r\nHost: a.test\r\n\r\n")
		}, Result{Protocol: HTTP, Host: "a.test"}},
		{"another protocol's head", 8000, func(n int) []byte {
			return fill(n, "OPTIONS * RTSP/1.0\r\n", "CSeq: 1\r\n", "\r\n")
		}, Result{Protocol: Unknown, OtherRequest: true}},
		{"unfinished head", 8000, func(n int) []byte {
			return fill(n, "GET / HTTP/1.1\r\nHost: a.test\r\n", "X-A: b\r\n", "")
		}, Result{Protocol: HTTP, Err: io.EOF}},
		{"unfinished request line", 4000, func(n int) []byte {
			return fill(n, "GET /", "x", "")
		}, Result{Protocol: HTTP, Err: io.EOF}},
		{"unfinished method", 4000, func(n int) []byte {
			return fill(n, "", "A", "")
		}, Result{Protocol: HTTP, Err: io.EOF}},
		{"empty lines", 4000, func(n int) []byte {
			return fill(n, "", "\r\n", "")
		}, Result{Protocol: HTTP, Err: io.EOF}},
		{"spaces", 4000, func(n int) []byte {
			return fill(n, "", " ", "")
		}, Result{Protocol: HTTP, Err: io.EOF}},
		{"capitals behind junk", 4000, func(n int) []byte {
			return fill(n, "\t", "A", "")
		}, Result{Protocol: HTTP, Err: io.EOF}},
		{"separators behind junk", 4000, func(n int) []byte {
			return fill(n, "\tGET", " ", "")
		}, Result{Protocol: HTTP, Err: io.EOF}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var work [2]int
			for i, n := range []int{tt.n, 2 * tt.n} {
				in := tt.in(n)
				r, w := peekWork(in)
				if r.Protocol != tt.want.Protocol || r.Host != tt.want.Host || !errors.Is(r.Err, tt.want.Err) ||
					r.OtherRequest != tt.want.OtherRequest {
					t.Fatalf("Peek(%d bytes) = %s, %q, %v, other %v; want %s, %q, %v, other %v", len(in),
						r.Protocol, r.Host, r.Err, r.OtherRequest, tt.want.Protocol, tt.want.Host, tt.want.Err, tt.want.OtherRequest)
				}
				if w > 4*len(in) {
					t.Errorf("Peek(%d bytes, a byte per read) examined %d bytes, want at most %d", len(in), w, 4*len(in))
				}
				work[i] = w
			}
			t.Logf("examined %d bytes for %d, %d for %d", work[0], tt.n, work[1], 2*tt.n)
			if 2*work[1] > 5*work[0] {
				t.Errorf("Peek examined %d bytes for %d, %d for %d: want at most 2.5 times as many for twice the bytes",
					work[0], tt.n, work[1], 2*tt.n)
			}
		})
	}
}

// TestPeekTLSTrickled sends ClientHellos cut into tiny records a byte per
// read, so that the reassembly's state is carried from read to read (and
// across the peek buffer's growth, which moves it): the answer must be what
// reads of 4 KiB give. Data may differ, as the reads stop at other bytes.
func TestPeekTLSTrickled(t *testing.T) {
	h := goHello(t, "denied.test")
	body := h[5:]
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name  string
		input []byte
		sni   string
		err   error
	}{
		{"1-byte records", reframe(h, 1), "denied.test", nil},
		{"1-byte records behind ccs and alert", cat(ccs, warning, reframe(h, 1)), "denied.test", nil},
		{"3-byte records, early data behind", cat(reframe(h, 3), appData), "denied.test", nil},
		{"1-byte records, unfinished", reframe(h[:len(h)-1], 1), "", io.EOF},
		{"1-byte records, alert inside", cat(reframe(rec(22, 0x0301, body[:200]...), 1), warning,
			reframe(rec(22, 0x0301, body[200:]...), 1)), "", ErrMalformedHello},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Now()
			dl := Deadlines{FirstBytes: now.Add(time.Minute), Complete: now.Add(time.Minute)}
			r := Peek(&trickleConn{replayConn{in: tt.input}}, dl)
			defer Release(&r)
			w := Peek(&replayConn{in: tt.input}, dl)
			defer Release(&w)
			if r.Protocol != TLS || string(r.Hello.ServerName) != tt.sni || !errors.Is(r.Err, tt.err) {
				t.Fatalf("Peek(a byte per read) = %s, %q, %v; want tls, %q, %v", r.Protocol, r.Hello.ServerName, r.Err, tt.sni, tt.err)
			}
			if r.HelloOK != w.HelloOK || r.HelloEnd != w.HelloEnd || string(r.Hello.ServerName) != string(w.Hello.ServerName) ||
				r.Hello.RecordVersion != w.Hello.RecordVersion || r.Err != w.Err {
				t.Errorf("Peek(a byte per read) = ok %v, end %d, %q, %#04x, %v; in reads of 4 KiB: ok %v, end %d, %q, %#04x, %v",
					r.HelloOK, r.HelloEnd, r.Hello.ServerName, r.Hello.RecordVersion, r.Err,
					w.HelloOK, w.HelloEnd, w.Hello.ServerName, w.Hello.RecordVersion, w.Err)
			}
			if !bytes.HasPrefix(tt.input, r.Data) {
				t.Errorf("Peek(a byte per read) kept %d bytes that are not the input's first", len(r.Data))
			}
		})
	}
}
