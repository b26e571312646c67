package httpconnect

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

// oneByteReader serves its bytes one per Read, as a client that sends
// one-byte segments, then io.EOF.
type oneByteReader struct{ b []byte }

func (r *oneByteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	p[0], r.b = r.b[0], r.b[1:]
	return 1, nil
}

// readHeadWork runs ReadHead on in, a byte per read, and returns what it
// returned and how many bytes its scans examined in all.
func readHeadWork(t *testing.T, in string, lim Limits) (head string, work int, err error) {
	t.Helper()
	scanned = func(n int) { work += n }
	defer func() { scanned = nil }()
	br := bufio.NewReaderSize(&oneByteReader{b: []byte(in)}, lim.Head)
	h, err := ReadHead(br, lim)
	return string(h), work, err
}

// fill returns first, then line repeated while it fits, then last, in
// about n bytes (never more).
func fill(n int, first, line, last string) string {
	k := max(0, (n-len(first)-len(last))/len(line))
	return first + strings.Repeat(line, k) + last
}

// TestReadHeadLinear holds the reading of a head to work linear in its
// length when the client sends it a byte at a time: each read's scan
// must resume where the last one stopped. A rescan of the whole buffer
// per read costs about n²/2 bytes, 0.5 GiB for a 32 KiB head, and lets a
// client that paces one-byte segments burn a core per few connections.
// The work is counted in bytes examined (the scanned hook), not timed:
// doubling the head must about double it, and it must stay within a
// small multiple of the head's length.
func TestReadHeadLinear(t *testing.T) {
	big := Limits{RequestLine: 32 << 10, Head: 32 << 10}
	tests := []struct {
		name string
		lim  Limits
		n    int // the smaller size; the larger is 2n
		in   func(n int) string
		err  error // nil: ReadHead returns the whole input
	}{
		{"short lines", DefaultLimits, 16000, func(n int) string {
			return fill(n, "CONNECT a.test:443 HTTP/1.1\r\n", "X-A: b\r\n", "\r\n")
		}, nil},
		{"bare LF lines", DefaultLimits, 16000, func(n int) string {
			return fill(n, "CONNECT a.test:443 HTTP/1.1\n", "X-A: b\n", "\n")
		}, nil},
		{"lines ending in CR", DefaultLimits, 16000, func(n int) string {
			return fill(n, "CONNECT a.test:443 HTTP/1.1\r\n", "X: \r\r\n", "\r\n")
		}, nil},
		{"one long header", DefaultLimits, 16000, func(n int) string {
			return fill(n, "CONNECT a.test:443 HTTP/1.1\r\nX: ", "y", "\r\n\r\n")
		}, nil},
		{"long request line", big, 16000, func(n int) string {
			return fill(n, "GET http://a.test/", "x", " HTTP/1.1\r\n\r\n")
		}, nil},
		{"request line at the limit", DefaultLimits, 4000, func(n int) string {
			return fill(n, "GET http://a.test/", "x", " HTTP/1.1\r\n\r\n")
		}, nil},
		{"unfinished head", DefaultLimits, 16000, func(n int) string {
			return fill(n, "CONNECT a.test:443 HTTP/1.1\r\n", "X-A: b\r\n", "")
		}, io.EOF},
		{"unfinished line", big, 16000, func(n int) string {
			return fill(n, "", "x", "")
		}, io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var work [2]int
			for i, n := range []int{tt.n, 2 * tt.n} {
				in := tt.in(n)
				head, w, err := readHeadWork(t, in, tt.lim)
				want := in
				if tt.err != nil {
					want = ""
				}
				if !errors.Is(err, tt.err) || head != want {
					t.Fatalf("ReadHead(%d bytes) = %d bytes, %v; want %d bytes, %v", len(in), len(head), err, len(want), tt.err)
				}
				if w > 4*len(in) {
					t.Errorf("ReadHead(%d bytes, a byte per read) examined %d bytes, want at most %d", len(in), w, 4*len(in))
				}
				work[i] = w
			}
			t.Logf("examined %d bytes for %d, %d for %d", work[0], tt.n, work[1], 2*tt.n)
			if 2*work[1] > 5*work[0] {
				t.Errorf("ReadHead examined %d bytes for %d, %d for %d: want at most 2.5 times as many for twice the bytes",
					work[0], tt.n, work[1], 2*tt.n)
			}
		})
	}
}
