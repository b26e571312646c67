package quicproxy

import (
	"github.com/egressd/egressd/internal/testnet"
	"net"
	"net/netip"
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
	before := sk.Bytes.Load()
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		n, err := p.WriteBatch(ms[:min(32, b.N-sent)], 0)
		if err == nil {
			sent += n
		}
	}
	for time.Since(time.Unix(0, sk.Last.Load())) < 100*time.Millisecond {
		time.Sleep(10 * time.Millisecond)
	}
	b.StopTimer()
	got := sk.Bytes.Load() - before
	b.ReportMetric(float64(got)/float64(b.N*len(payload))*100, "%delivered")
}

// benchSink is a UDP sink on loopback and its address.
type benchSink struct {
	*testnet.UDPSink
	addr netip.AddrPort
}

func startBenchSink(b *testing.B) *benchSink {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pc.Close() })
	return &benchSink{UDPSink: testnet.Sink(pc), addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
}
