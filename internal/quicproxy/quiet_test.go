package quicproxy

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	iquic "github.com/egressd/egressd/internal/quic"
)

// TestQuietFlowGivesBatchesBack: relayed flows that each had a burst both
// ways and then went quiet hold (almost) nothing in their batches, and
// relay the next burst as before. A flow's idle timeout is minutes, and
// its place is counted in file descriptors, not memory: a client that
// keeps many flows alive with a burst now and then must not make each
// keep the 32 datagram buffers a way that the burst grew its batches to.
func TestQuietFlowGivesBatchesBack(t *testing.T) {
	const (
		flows = 32
		burst = 64 // datagrams each way: enough to grow a batch to maxBatch
		// quietBound is what a quiet flow's two batches may hold: not one
		// datagram's buffer each way.
		quietBound = maxDatagram
	)
	srv := startUDPEcho(t)
	w := newWorld(t, srv, func(p *Params) { p.Idle = time.Minute })
	before := heapInUse()

	clients := make([]*udpClient, flows)
	for i := range clients {
		c := w.udpClient()
		ds := initials(t, iquic.Version1, fmt.Appendf(nil, "quiet-flow-%04d", i), allowedName, 2, uint64(i))
		c.send(ds...)
		if got := c.recvN(len(ds), 5*time.Second); got != len(ds) {
			t.Fatalf("flow %d: %d of its %d Initial datagrams came back", i, got, len(ds))
		}
		clients[i] = c
	}
	roundTrip := func(round string) {
		t.Helper()
		for i, c := range clients {
			c.burst(burst)
			if got := c.recvN(burst, 5*time.Second); got != burst {
				t.Fatalf("%s: flow %d: %d of a burst of %d datagrams came back", round, i, got, burst)
			}
		}
	}
	roundTrip("first burst")
	t.Logf("after a burst of %d each way, the batches of a flow hold up to %d bytes", burst, slices.Max(w.s.batchBytes()))

	var held []int64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		held = w.s.batchBytes()
		if len(held) != flows {
			t.Fatalf("%d flows relayed, want %d", len(held), flows)
		}
		if slices.Max(held) <= quietBound || time.Now().After(deadline) {
			break
		}
	}
	perFlow := (heapInUse() - before) / flows
	t.Logf("quiet: the batches of a flow hold up to %d bytes; the process holds %d bytes of heap and stacks a flow (both ends' sockets included)",
		slices.Max(held), perFlow)
	if m := slices.Max(held); m > quietBound {
		t.Errorf("5s after their last datagram, a flow's batches still hold %d bytes (all: %v), want at most %d", m, held, quietBound)
	}

	roundTrip("burst after quiet")
}

// batchBytes is what the batches of each relayed flow hold.
func (s *Server) batchBytes() []int64 {
	var held []int64
	for _, f := range s.snapshot() {
		f.mu.Lock()
		if r := f.relay; r != nil {
			held = append(held, r.batchBytes.Load())
		}
		f.mu.Unlock()
	}
	return held
}

// heapInUse is the heap and goroutine stacks in use once what is garbage
// is collected (twice: sync.Pool keeps what it held until the second).
func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse + ms.StackInuse)
}

// startUDPEcho is a UDP server on loopback that sends every datagram back.
func startUDPEcho(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// burst sends n short-header datagrams of 100 bytes in one sendmmsg.
func (c *udpClient) burst(n int) {
	c.t.Helper()
	d := make([]byte, 100)
	d[0] = 0x40 // a short header: it passes as it is
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{d}
	}
	p := ipv4.NewPacketConn(c.pc)
	for len(ms) > 0 {
		sent, err := p.WriteBatch(ms, 0)
		if err != nil {
			c.t.Fatal(err)
		}
		ms = ms[sent:]
	}
}

// recvN reads up to n datagrams, each within d, and reports how many came.
func (c *udpClient) recvN(n int, d time.Duration) int {
	for i := range n {
		if c.recv(d) == nil {
			return i
		}
	}
	return n
}
