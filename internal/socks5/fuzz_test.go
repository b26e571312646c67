package socks5

import (
	"bytes"
	"testing"
)

// FuzzSOCKS5Request checks ReadRequest on arbitrary bytes: it never panics,
// never reads past the message it accepts, and what it accepts re-encodes
// (AppendRequest) to exactly the bytes it consumed — so the parser and the
// wire format agree, and no two byte strings mean the same request.
func FuzzSOCKS5Request(f *testing.F) {
	f.Add([]byte{5, 1, 0, 1, 198, 51, 100, 7, 1, 187})
	f.Add(append([]byte{5, 1, 0, 3, 11}, "example.com\x01\xbb"...))
	f.Add(append([]byte{5, 1, 0, 4}, make([]byte, 18)...))
	f.Add([]byte{5, 2, 0, 1, 0, 0, 0, 0, 0, 80})
	f.Add([]byte{5, 1, 0, 3, 0, 0, 80})
	f.Add([]byte{4, 1, 0, 80, 1, 2, 3, 4, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		q, err := ReadRequest(r)
		if err != nil {
			return
		}
		used := len(data) - r.Len()
		if q.Domain == "" && !q.Addr.IsValid() {
			t.Fatalf("ReadRequest(%x) = %+v: no destination", data, q)
		}
		if q.Port == 0 {
			t.Fatalf("ReadRequest(%x) accepted port 0", data)
		}
		if re := AppendRequest(nil, q); !bytes.Equal(re, data[:used]) {
			t.Fatalf("ReadRequest(%x) = %+v, re-encoded as %x", data[:used], q, re)
		}
	})
}

// FuzzSOCKS5Greeting: the greeting and the RFC 1929 request never panic
// and never consume more than their length bytes say.
func FuzzSOCKS5Greeting(f *testing.F) {
	f.Add([]byte{5, 2, 0, 2, 1, 1, 'u', 1, 'p'})
	f.Add([]byte{5, 0})
	f.Add([]byte{5, 255})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		m, err := ReadGreeting(r)
		if err != nil {
			return
		}
		if len(m) == 0 || len(data)-r.Len() != 2+len(m) {
			t.Fatalf("ReadGreeting(%x) = %x, consumed %d", data, m, len(data)-r.Len())
		}
		before := r.Len()
		u, p, err := ReadUserPass(r)
		if err == nil && before-r.Len() != 3+len(u)+len(p) {
			t.Fatalf("ReadUserPass consumed %d for %q %q", before-r.Len(), u, p)
		}
	})
}
