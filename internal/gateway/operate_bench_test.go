package gateway

import (
	"io"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
)

// BenchmarkOperateOverhead measures what this file's features add to each
// connection outside the socket calls: admission against the limits, the
// per-source count, and the metrics a closed connection moves. It runs in
// parallel, as connections do.
func BenchmarkOperateOverhead(b *testing.B) {
	for _, tc := range []struct{ name, limits string }{
		{"limits=off", ""},
		{"limits=on", "limits: {max_connections: 1000000, max_connections_per_source: 1000000, max_pending_handshakes: 1000000}\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cfg, err := config.Parse("b.yaml", []byte("listeners: [{name: a, mode: sni, address: 127.0.0.1:0}]\n"+tc.limits))
			if err != nil {
				b.Fatal(err)
			}
			pol, _ := cfg.Compile()
			g := New(&State{Config: cfg, Policy: pol}, slog.New(slog.DiscardHandler), accesslog.New(io.Discard, "json"))
			var next atomic.Uint32
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				n := next.Add(1)
				src := netip.AddrFrom4([4]byte{10, 0, byte(n >> 8), byte(n)})
				for pb.Next() {
					held, _, _, ok := g.count(src, false)
					if !ok {
						b.Fatal("admit refused under the limits")
					}
					lim := &g.state.Load().Config.Limits
					if lim.MaxConnectionsPerSource > 0 {
						if !g.sources.Acquire(src, lim.MaxConnectionsPerSource) {
							b.Fatal("acquire refused")
						}
					}
					g.pending.Add(-1)
					if held {
						g.pendingSources.Release(src)
					}
					g.metrics.PeekWait(time.Millisecond)
					g.metrics.Dial(time.Millisecond)
					g.metrics.Conn(&accesslog.Record{Start: time.Now(), Listener: "a", Action: accesslog.Allow, Rule: "github", Protocol: "tls", FQDNSource: accesslog.FromSNI, BytesUp: 1000, BytesDown: 5000})
					if lim.MaxConnectionsPerSource > 0 {
						g.sources.Release(src)
					}
					g.active.Add(-1)
				}
			})
		})
	}
}
