package quicproxy

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	iquic "github.com/egressd/egressd/internal/quic"
)

// BenchmarkRelay streams 1200-byte short-header datagrams, 32 a sendmmsg,
// through one decided flow on loopback into a sink: b.N datagrams. It
// reports what reached the sink; client, relay and sink share the process
// (for the relay's own CPU per GB, see e2e's TestQUICBench).
func BenchmarkRelay(b *testing.B) {
	sk := startBenchSink(b)
	w := newWorld(b, sk.addr, func(p *Params) { p.Idle = 10 * time.Second })
	pc, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(w.addr))
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	for _, d := range initials(b, iquic.Version1, []byte("bench-connection"), allowedName, 2, 1) {
		pc.Write(d)
	}
	time.Sleep(50 * time.Millisecond)
	payload := make([]byte, 1200)
	payload[0] = 0x40
	ms := make([]ipv4.Message, 32)
	for i := range ms {
		ms[i].Buffers = [][]byte{payload}
	}
	p := ipv4.NewPacketConn(pc)
	before := sk.bytes.Load()
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		n, err := p.WriteBatch(ms[:min(32, b.N-sent)], 0)
		if err == nil {
			sent += n
		}
	}
	for time.Since(time.Unix(0, sk.last.Load())) < 100*time.Millisecond {
		time.Sleep(10 * time.Millisecond)
	}
	b.StopTimer()
	got := sk.bytes.Load() - before
	b.ReportMetric(float64(got)/float64(b.N*len(payload))*100, "%delivered")
}

// benchSink counts the bytes of the datagrams it gets.
type benchSink struct {
	addr  netip.AddrPort
	bytes atomic.Int64
	last  atomic.Int64 // UnixNano of the last datagram
}

func startBenchSink(b *testing.B) *benchSink {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	pc.SetReadBuffer(16 << 20)
	b.Cleanup(func() { pc.Close() })
	s := &benchSink{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
	go func() {
		p := ipv4.NewPacketConn(pc)
		ms := make([]ipv4.Message, 64)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, 2048)}
		}
		for {
			n, err := p.ReadBatch(ms, 0)
			if err != nil {
				return
			}
			var total int64
			for _, m := range ms[:n] {
				total += int64(m.N)
			}
			s.bytes.Add(total)
			s.last.Store(time.Now().UnixNano())
		}
	}()
	return s
}
