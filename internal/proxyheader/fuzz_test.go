package proxyheader

import (
	"bufio"
	"bytes"
	"errors"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

// FuzzLen checks Len's framing against go-proxyproto's parser: where Len
// says a header is complete, a parser that succeeds on the same bytes must
// have consumed exactly that many; where Len says there is no header, the
// parser must agree. Parse must never panic. Seeds are in
// testdata/fuzz/FuzzLen.
func FuzzLen(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nGET /"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(v2Header(f, proxyproto.PROXY, "192.0.2.9:5555", "198.51.100.1:443"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, complete, err := Len(b)
		br := bufio.NewReaderSize(bytes.NewReader(b), max(len(b), 16))
		h, perr := proxyproto.Read(br)
		switch {
		case errors.Is(err, ErrNoHeader):
			if perr == nil {
				t.Fatalf("Len(%q) = no header, but go-proxyproto parsed %+v", b, h)
			}
		case err == nil && complete:
			if n > len(b) {
				t.Fatalf("Len(%q) = %d, beyond the input", b, n)
			}
			if perr == nil && len(b)-br.Buffered() != n {
				t.Fatalf("Len(%q) = %d, go-proxyproto consumed %d", b, n, len(b)-br.Buffered())
			}
			Parse(b[:n])
		}
	})
}
