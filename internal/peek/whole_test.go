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
		name  string
		input []byte
		ok    bool
	}{
		{"whole hello", hello, true},
		{"hello in 100-byte records", reframe(hello, 100), true},
		{"change_cipher_spec first", append(append([]byte{}, ccs...), hello...), true},
		{"half a hello", hello[:len(hello)/2], false},
		{"record header only", hello[:5], false},
		{"http", []byte("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), false},
		{"nothing", nil, false},
		{"not tls after all", []byte{22, 9, 9, 0, 1, 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf := append(Buffer(), tc.input...)
			r, ok := Whole(buf)
			if ok != tc.ok {
				t.Fatalf("Whole = %v, want %v", ok, tc.ok)
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
