package quicproxy

import (
	"math/rand/v2"
	"testing"
)

// TestSecondHelloWhole: the gathered bytes give the message only once
// every byte of it came, in whatever order and with whatever overlaps,
// and a byte that differs from one that came is refused.
func TestSecondHelloWhole(t *testing.T) {
	msg := make([]byte, 4+300)
	msg[0], msg[2], msg[3] = 1, 1, 44 // client_hello, 300 bytes
	for i := 4; i < len(msg); i++ {
		msg[i] = byte(i)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		var s secondHello
		// Pieces at random, overlapping, the last byte last.
		for range 40 {
			from := rng.IntN(len(msg) - 1)
			to := min(len(msg)-1, from+1+rng.IntN(40))
			if !s.add(from, msg[from:to]) {
				t.Fatalf("round %d: same bytes refused", round)
			}
			if s.whole() != nil && !s.came(len(msg)) {
				t.Fatalf("round %d: whole before every byte came", round)
			}
		}
		for at := 0; at < len(msg)-1; at++ {
			s.add(at, msg[at:at+1])
		}
		if s.whole() != nil {
			t.Fatalf("round %d: whole without its last byte", round)
		}
		if !s.add(len(msg)-1, msg[len(msg)-1:]) {
			t.Fatal("last byte refused")
		}
		if got := s.whole(); string(got) != string(msg) {
			t.Fatalf("round %d: whole = %d bytes, want the %d sent", round, len(got), len(msg))
		}
		if s.add(10, []byte{msg[10] + 1}) {
			t.Fatalf("round %d: a byte that differs from one that came was taken", round)
		}
	}
}
