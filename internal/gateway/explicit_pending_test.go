package gateway

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/testnet"
)

// TestExplicitPendingHandshakes: an explicit client that has sent part of
// its request and stalls counts as a pending handshake until the request
// is read, so max_pending_handshakes: 1 refuses a second such client, for
// HTTP and SOCKS5 alike.
func TestExplicitPendingHandshakes(t *testing.T) {
	for _, first := range []string{"CON", "\x05"} {
		cfg, err := config.Parse("t.yaml", []byte(`listeners:
  - {name: proxy, mode: explicit, address: "127.0.0.1:0"}
timeouts: {first_bytes: 200ms, client_hello: 3s, connect: 2s, idle: 1m}
limits: {max_pending_handshakes: 1}
policy: {default: deny}
`))
		if err != nil {
			t.Fatal(err)
		}
		pol, _ := cfg.Compile()
		g := New(&State{Config: cfg, Policy: pol}, slog.New(slog.NewTextHandler(io.Discard, nil)), accesslog.New(&testnet.Buffer{}, "json"))
		ctx, cancel := context.WithCancel(context.Background())
		if err := g.Bind(ctx); err != nil {
			t.Fatal(err)
		}
		served := make(chan struct{})
		go func() { g.Serve(ctx, 100*time.Millisecond); close(served) }()
		addr := g.Addrs()["proxy"].String()

		var held []net.Conn
		for i := range 3 {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				continue // refused at once (over the limit) before connect returned
			}
			held = append(held, c)
			io.WriteString(c, first) // a handshake started, never finished
			time.Sleep(100 * time.Millisecond)
			t.Logf("first=%q after client %d: pending=%d active=%d", first, i+1, g.pending.Load(), g.active.Load())
		}
		if p, a := g.pending.Load(), g.active.Load(); p != 1 || a != 1 {
			t.Errorf("first=%q: 3 stalled handshakes with max_pending_handshakes 1: pending=%d active=%d, want pending=1 active=1 (others reset)", first, p, a)
		}
		for _, c := range held {
			c.Close()
		}
		cancel()
		<-served
	}
}
