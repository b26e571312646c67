package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/limit"
	"github.com/egressd/egressd/internal/testnet"
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

// TestSilentServerFirstShare: a client that stays silent after a
// server-first allow holds a wait (two goroutines and a buffer, for up to
// idle) until it speaks; one source may hold its share of the pending
// places so (three quarters of max_pending_handshakes), and no more,
// while another source's server-first connection is still served.
func TestSilentServerFirstShare(t *testing.T) {
	greeter := testnet.Listen(t)
	testnet.Serve(t, greeter, func(c net.Conn) {
		io.WriteString(c, "220 hello\r\n")
		io.Copy(io.Discard, c)
	})
	g := serveConfig(t, `listeners:
  - {name: proxy, mode: explicit, address: "127.0.0.1:0"}
timeouts: {first_bytes: 100ms, client_hello: 3s, connect: 2s, idle: 1m}
limits: {max_pending_handshakes: 8}
policy: {default: deny, rules: [{name: lo, action: allow, destinations: [127.0.0.0/8]}]}
`, 100*time.Millisecond)
	proxy := g.Addrs()["proxy"]
	greeted := func(from string) bool {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", proxy.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", greeter.Addr(), greeter.Addr())
		br := bufio.NewReader(c)
		if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		line, err := br.ReadString('\n')
		return err == nil && line == "220 hello\r\n"
	}
	share := limit.SourceShare(8)
	for i := range share {
		if !greeted("127.0.0.1") {
			t.Fatalf("silent connection %d of %d, within the share, was not greeted", i+1, share)
		}
	}
	if greeted("127.0.0.1") {
		t.Errorf("a silent server-first connection past the source's share of %d was served", share)
	}
	if !greeted("127.0.0.2") {
		t.Error("another source's server-first connection was not served")
	}
}
