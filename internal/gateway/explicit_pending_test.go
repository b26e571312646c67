package gateway

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestExplicitPendingHandshakes: an explicit client that has sent part of
// its request and stalls counts as a pending handshake until the request
// is read, so max_pending_handshakes: 1 refuses a second such client, for
// HTTP and SOCKS5 alike.
func TestExplicitPendingHandshakes(t *testing.T) {
	for _, first := range []string{"CON", "\x05"} {
		g := serveConfig(t, `listeners:
  - {name: proxy, mode: explicit, address: "127.0.0.1:0"}
timeouts: {first_bytes: 200ms, client_hello: 3s, connect: 2s, idle: 1m}
limits: {max_pending_handshakes: 1}
policy: {default: deny}
`, 100*time.Millisecond)
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
		g.cancel()
		<-g.done
	}
}
