package peek

import (
	"bytes"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// TestWhole checks the relay loop's first-read classification against
// Peek's: only bytes that hold a whole hello that parses are taken; all
// else stays the caller's, to peek on from.
func TestWhole(t *testing.T) {
	hello := fixture(t, "go-default.hex")
	ccs := []byte{20, 3, 3, 0, 1, 1}
	for _, tc := range []struct {
		name     string
		input    []byte
		ok, more bool
	}{
		{"whole hello", hello, true, false},
		{"hello in 100-byte records", reframe(hello, 100), true, false},
		{"change_cipher_spec first", append(append([]byte{}, ccs...), hello...), true, false},
		{"half a hello", hello[:len(hello)/2], false, true},
		{"a segment of a post-quantum hello", hello[:1448], false, true},
		{"record header only", hello[:5], false, true},
		{"http", []byte("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), false, false},
		{"nothing", nil, false, false},
		{"not tls after all", []byte{22, 9, 9, 0, 1, 1}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf := append(Buffer(), tc.input...)
			r, ok, more := Whole(buf)
			if ok != tc.ok || more != tc.more {
				t.Fatalf("Whole = %v, more %v; want %v, more %v", ok, more, tc.ok, tc.more)
			}
			if ok {
				if r.Protocol != TLS || !r.HelloOK || !bytes.Equal(r.Data, tc.input) || string(r.Hello.ServerName) == "" {
					t.Errorf("Whole result: protocol %q, hello %v, %d bytes, SNI %q", r.Protocol, r.HelloOK, len(r.Data), r.Hello.ServerName)
				}
				Release(&r)
			}
		})
	}
}

// TestPeekAfter checks that bytes read already count as Peek's first
// read: the rest of the hello is read from the socket, and Data holds
// both, in order.
func TestPeekAfter(t *testing.T) {
	hello := fixture(t, "go-default.hex")
	client, server := testnet.Pair(t)
	first := append(Buffer(), hello[:37]...)
	go func() {
		time.Sleep(20 * time.Millisecond)
		client.Write(hello[37:])
	}()
	r := PeekAfter(server, deadlines(time.Second, 5*time.Second), first)
	defer Release(&r)
	if r.Protocol != TLS || !r.HelloOK || r.Err != nil || !bytes.Equal(r.Data, hello) {
		t.Fatalf("PeekAfter: protocol %q, hello %v, err %v, %d of %d bytes", r.Protocol, r.HelloOK, r.Err, len(r.Data), len(hello))
	}
}
