package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// TestExplicitBehindProxyProtocol runs an explicit listener with
// proxy_protocol: true, as behind an L4 load balancer: the header's source
// is what rules, limits and the log see, a client without a header is
// reset, and the proxy handshake counts as pending only while it lasts.
func TestExplicitBehindProxyProtocol(t *testing.T) {
	echo := testnet.Listen(t)
	testnet.Serve(t, echo, func(c net.Conn) { io.Copy(c, c) })
	port := echo.Addr().(*net.TCPAddr).Port
	text := fmt.Sprintf(`listeners:
  - {name: proxy, mode: explicit, address: "127.0.0.1:0", proxy_protocol: true}
resolver: %s
limits: {max_connections_per_source: 1}
policy:
  default: deny
  rules:
    - {name: blocked-src, action: deny, sources: ["192.0.2.66"]}
    - {name: good, action: allow, fqdn: ["good.test"], destinations: ["127.0.0.0/8"]}
`, testnet.DNS(t, baseRecords))
	g := serveConfig(t, text, time.Second)
	w := &world{t: t, gw: g.Gateway, logs: g.logs, addr: g.Addrs()["proxy"]}

	connect := func(header string) (*http.Response, net.Conn) {
		c, err := net.Dial("tcp", w.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "%sCONNECT good.test:%d HTTP/1.1\r\nHost: good.test:%d\r\n\r\n", header, port, port)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return nil, c
		}
		return resp, c
	}

	// Allowed, from the header's source; the tunnel carries bytes.
	resp, c := connect("PROXY TCP4 192.0.2.7 127.0.0.1 40000 3128\r\n")
	if resp == nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT through a PROXY header: %v", resp)
	}
	// A line end: a bare token ("ping") could still be the start of an
	// HTTP request line, which peek waits client_hello to see finished.
	io.WriteString(c, "ping\n")
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping\n" {
		t.Errorf("tunnel echo: %q %v", buf, err)
	}
	// The same source again while the first is open: over
	// max_connections_per_source, reset before any answer.
	if resp2, _ := connect("PROXY TCP4 192.0.2.7 127.0.0.1 40001 3128\r\n"); resp2 != nil {
		t.Errorf("second connection from one source with max_connections_per_source 1: %s", resp2.Status)
	}
	c.Close()
	e := w.waitLog(func(e entry) bool { return e["src"] == "192.0.2.7:40000" })
	w.want(e, map[string]any{"action": "allow", "rule": "good", "fqdn_source": "connect"})
	e = w.waitLog(func(e entry) bool { return e["src"] == "192.0.2.7:40001" })
	if r := fmt.Sprint(e["reason"]); !strings.Contains(r, "max_connections_per_source") {
		t.Errorf("over the per-source limit: reason %q", r)
	}

	// A source rule sees the header's address.
	resp, _ = connect("PROXY TCP4 192.0.2.66 127.0.0.1 40002 3128\r\n")
	if resp == nil || resp.StatusCode != 403 {
		t.Errorf("CONNECT from a blocked source: %v, want 403", resp)
	}
	e = w.waitLog(func(e entry) bool { return e["src"] == "192.0.2.66:40002" })
	w.want(e, map[string]any{"action": "deny", "rule": "blocked-src"})

	// No header: reset, logged.
	if resp, _ := connect(""); resp != nil {
		t.Errorf("CONNECT without a PROXY header: %s, want a reset", resp.Status)
	}
	w.waitLog(func(e entry) bool {
		return strings.HasPrefix(fmt.Sprint(e["reason"]), "PROXY protocol expected")
	})

	// Nothing is left pending once the handshakes are over.
	deadline := time.Now().Add(5 * time.Second)
	for g.pending.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := g.pending.Load(); n != 0 {
		t.Errorf("%d connections still counted as pending handshakes", n)
	}
}
