package quicproxy

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	iquic "github.com/egressd/egressd/internal/quic"
)

// TestOpensPerDatagramBounded: the Initial packets of one datagram on a
// relayed flow cost a bounded number of Keys.Open calls, whatever the
// datagram packs. Before, every coalesced Initial was tried with every
// decided connection's keys: 40 minimal Initials of random connection IDs
// in one 1,240-byte datagram, on a flow of 32 decided connections, cost
// 1,280 header-protection and AEAD opens under the flow's lock.
func TestOpensPerDatagramBounded(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	c := w.udpClient()
	var last [][]byte
	for i := range maxFlowConnections {
		last = initials(t, iquic.Version1, fmt.Appendf(nil, "opens-conn-%04d", i), allowedName, 1, uint64(i))
		c.send(last...)
		if n := sk.upTo(1, 2*time.Second); n != 1 {
			t.Fatalf("connection %d: the server got %d datagrams, want 1", i, n)
		}
	}
	r := onlyRelay(t, w)
	if keys := r.keyCount(); keys != maxFlowConnections {
		t.Fatalf("the flow keeps %d connections' keys, want %d", keys, maxFlowConnections)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name    string
		packets int
		max     int // Keys.Open calls
	}{
		{"40 coalesced Initials", 40, 2 * maxFlowConnections},
		{"4 coalesced Initials", 4, 2 * maxFlowConnections},
		{"2 coalesced Initials", 2, 2 * maxFlowConnections},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tinyInitials(rng, tc.packets, minInitialDatagram)
			before := r.openCount()
			c.send(d)
			if n := sk.count(300 * time.Millisecond); n != 0 {
				t.Errorf("the server got %d datagrams of Initials nothing opens", n)
			}
			if got := r.openCount() - before; got > tc.max {
				t.Errorf("one datagram of %d coalesced Initials cost %d Keys.Open calls, want at most %d", tc.packets, got, tc.max)
			}
		})
	}
	// The flow still carries its connections: a retransmission passes.
	c.send(last...)
	if n := sk.count(300 * time.Millisecond); n != 1 {
		t.Errorf("the server got %d datagrams of a decided connection's Initial after the flood, want 1", n)
	}
}

// tinyInitials is a datagram of n minimal QUIC v1 Initial packets with
// random 2-byte connection IDs and random payloads (no key opens them),
// the last padded so that the datagram is at least size bytes.
func tinyInitials(rng *rand.Rand, n, size int) []byte {
	var d []byte
	for i := range n {
		payload := 20 // a packet number and a header protection sample
		if i == n-1 {
			payload = max(payload, size-len(d)-11)
		}
		d = append(d, 0xc0) // long header, Initial, 1-byte packet number
		d = binary.BigEndian.AppendUint32(d, uint32(iquic.Version1))
		d = append(d, 2, byte(rng.Uint32()), byte(rng.Uint32()), 0, 0) // DCID, SCID, token
		d = append(d, 0x40|byte(payload>>8), byte(payload))
		for range payload {
			d = append(d, byte(rng.Uint32()))
		}
	}
	return d
}

// onlyRelay returns the relay of w's one flow.
func onlyRelay(t *testing.T, w *world) *relay {
	t.Helper()
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	if len(w.s.flows) != 1 {
		t.Fatalf("%d flows, want 1", len(w.s.flows))
	}
	for _, f := range w.s.flows {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.relay == nil {
			t.Fatal("the flow is not relayed")
		}
		return f.relay
	}
	return nil
}

func (r *relay) keyCount() int {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	return len(r.keys)
}

func (r *relay) openCount() int {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	return r.opens
}
