package gateway

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/socks5"
	"github.com/egressd/egressd/internal/testnet"
)

// refusals reads egressd_destination_refusals_total{reason} as a scrape
// would.
func refusals(t *testing.T, g *Gateway, reason string) float64 {
	t.Helper()
	mfs, err := g.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "egressd_destination_refusals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no egressd_destination_refusals_total{reason=%q}", reason)
	return 0
}

// logLines counts the access log's lines.
func logLines(w *world) int {
	return strings.Count(w.logText(), "\n")
}

// TestSelfDialLoop: an allowed name that resolves to
// egressd's own listener (an sni listener whose upstream_port is its own
// port, the name allowed with destinations 127.0.0.0/8) must be refused
// once, as a deny, not dialled: before the fix every dial was accepted by
// the same listener and dialled again, until file descriptors ran out
// (max_connections bounds the loop here, should it come back). Report-only
// mode refuses it too.
func TestSelfDialLoop(t *testing.T) {
	for _, enforce := range []bool{true, false} {
		t.Run(fmt.Sprintf("enforce=%v", enforce), func(t *testing.T) {
			port := closedPort(t)
			cfg := fmt.Sprintf(`listeners:
  - {name: sni, mode: sni, address: 127.0.0.1:%d, upstream_port: %d}
resolver: %s
limits: {max_connections: 20}
timeouts: %s
policy:
  enforce: %v
  default: deny
  rules:
    - {name: loop, action: allow, fqdn: ["loop.test"], destinations: ["127.0.0.0/8"]}
`, port, port, testnet.DNS(t, records{"loop.test": {"127.0.0.1"}}), defaultWorldTimeouts, enforce)
			s := serveConfig(t, cfg, time.Second)
			w := &world{t: t, gw: s.Gateway, logs: s.logs, addr: s.Addrs()["sni"]}
			_, raw, err := dialTLS(w, "loop.test")
			if err == nil || !strings.Contains(err.Error(), "access denied") {
				t.Fatalf("handshake through a looping name: %v, want access denied", err)
			}
			raw.Close()
			self := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
			e := w.waitLog(matching(map[string]any{"fqdn": "loop.test"}))
			w.want(e, map[string]any{"action": "deny", "rule": "loop", "enforced": true,
				"reason": fmt.Sprintf("destination %s is egressd's own listener", self)})
			// The deny came before any dial: nothing else can still arrive.
			if n := logLines(w); n != 1 {
				t.Errorf("access log has %d lines, want the one refused connection:\n%s", n, w.logText())
			}
			if got := refusals(t, s.Gateway, metrics.RefusedOwnListener); got != 1 {
				t.Errorf("egressd_destination_refusals_total{reason=own_listener} = %v, want 1", got)
			}
			if n := w.liveConns(); n != 0 {
				t.Errorf("%d connections still open, want 0", n)
			}
		})
	}
}

// selfWorld is an explicit listener, a DNS forwarder and an admin address,
// with one rule that opens 127.0.0.1 by its destinations (the explicit
// opt-in to a local address), and a plain HTTP server on 127.0.0.1.
type selfWorld struct {
	*world
	proxy, dns, admin, plain netip.AddrPort
}

func newSelfWorld(t *testing.T, rules string) *selfWorld {
	t.Helper()
	w := &selfWorld{world: &world{t: t}}
	w.plain = startHTTP(t, "127.0.0.1:0", false)
	w.admin = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), closedPort(t))
	dnsAddr := testnet.DNS(t, records{"self.test": {"127.0.0.1"}, "host.test": {"198.51.100.7"}})
	cfg := fmt.Sprintf(`listeners:
  - {name: proxy, mode: explicit, address: 127.0.0.1:0}
resolver: %s
dns: {address: 127.0.0.1:0, upstreams: [%q]}
admin: {address: %s}
timeouts: %s
policy:
  default: deny
  rules:
%s
    - {name: local, action: allow, destinations: ["127.0.0.1/32"]}
`, dnsAddr, dnsAddr, w.admin, defaultWorldTimeouts, rules)
	s := serveConfig(t, cfg, time.Second)
	w.gw, w.logs = s.Gateway, s.logs
	w.proxy, w.dns = s.Addrs()["proxy"], s.DNSAddr()
	return w
}

// connect sends CONNECT host:port through the proxy and returns the
// status and the access-log line.
func (w *selfWorld) connect(host string, port uint16) (int, entry) {
	w.t.Helper()
	c, br := rawProxy(w.t, w.proxy)
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n\r\n", net.JoinHostPort(host, fmt.Sprint(port)))
	resp, _ := readResponse(w.t, br, "CONNECT")
	c.Close()
	return resp.StatusCode, w.waitLog(bySrcPort(c))
}

// TestSelfDialOptIn: a rule whose destinations name 127.0.0.1/32 does
// reach a server on 127.0.0.1, but never egressd's own listener, its DNS
// forwarder or its admin endpoint there, by address or by a name that
// resolves to it, over CONNECT, SOCKS5 or plain HTTP.
func TestSelfDialOptIn(t *testing.T) {
	w := newSelfWorld(t, "")
	code, body, err := get(t, client(t, "http://"+w.proxy.String()), fmt.Sprintf("http://%s/opt-in", w.plain))
	if err != nil || code != 200 || !strings.Contains(body, "path=/opt-in") {
		t.Fatalf("GET a local server the rule names: %d %q %v, want it served", code, body, err)
	}
	if code, _ := w.connect("127.0.0.1", w.plain.Port()); code != 200 {
		t.Errorf("CONNECT to a local server the rule names: %d, want 200", code)
	}

	own := func(ap netip.AddrPort) string { return fmt.Sprintf("destination %s is egressd's own listener", ap) }
	refused := 0
	for _, tt := range []struct {
		name, host string
		port       uint16
	}{
		{"the proxy listener", "127.0.0.1", w.proxy.Port()},
		{"the DNS forwarder", "127.0.0.1", w.dns.Port()},
		{"the admin endpoint", "127.0.0.1", w.admin.Port()},
		{"a name resolving to the proxy listener", "self.test", w.proxy.Port()},
	} {
		t.Run("CONNECT "+tt.name, func(t *testing.T) {
			code, e := w.connect(tt.host, tt.port)
			refused++
			if code != 403 {
				t.Errorf("CONNECT %s:%d = %d, want 403", tt.host, tt.port, code)
			}
			w.want(e, map[string]any{"action": "deny", "rule": "local", "enforced": true,
				"reason": own(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), tt.port))})
		})
	}
	t.Run("SOCKS5 the proxy listener", func(t *testing.T) {
		c, br := rawProxy(t, w.proxy)
		c.Write(socks5.AppendRequest([]byte{5, 1, 0}, socks5.Request{Cmd: socks5.CmdConnect, Addr: w.proxy.Addr(), Port: w.proxy.Port()}))
		got := make([]byte, 12)
		refused++
		if _, err := io.ReadFull(br, got); err != nil || got[3] != socks5.ReplyNotAllowed {
			t.Fatalf("SOCKS5 CONNECT %s: reply %x %v, want code 02", w.proxy, got, err)
		}
		c.Close()
		w.want(w.waitLog(bySrcPort(c)), map[string]any{"action": "deny", "reason": own(w.proxy)})
	})
	t.Run("plain HTTP to the admin endpoint", func(t *testing.T) {
		c, br := rawProxy(t, w.proxy)
		fmt.Fprintf(c, "GET http://%s/metrics HTTP/1.1\r\nHost: %[1]s\r\n\r\n", w.admin)
		resp, _ := readResponse(t, br, "GET")
		refused++
		if resp.StatusCode != 403 {
			t.Errorf("GET the admin endpoint through the proxy = %d, want 403", resp.StatusCode)
		}
		c.Close()
		w.waitLog(matching(map[string]any{"action": "deny", "reason": own(w.admin)}))
	})
	if got := refusals(t, w.gw, metrics.RefusedOwnListener); got != float64(refused) {
		t.Errorf("egressd_destination_refusals_total{reason=own_listener} = %v, want %d", got, refused)
	}
}

// TestSelfDialLocalAddress: a name that resolves to an address of one of
// this host's interfaces (not loopback) is refused when the rule allows it
// by name alone. The host's real addresses are usually private, and so
// restricted anyway; the second case makes a public address (198.51.100.7)
// one of this host's, which only the local-address check refuses.
func TestSelfDialLocalAddress(t *testing.T) {
	t.Run("an interface address", func(t *testing.T) {
		var local netip.Addr
		addrs, err := interfaceAddrs()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if a = a.Unmap(); !a.IsLoopback() && !a.IsLinkLocalUnicast() {
				local = a
				break
			}
		}
		if !local.IsValid() {
			t.Skip("this host has no interface address but loopback and link-local")
		}
		w := newProxyWorldFrom(t, records{"iface.test": {local.String()}},
			`    - {name: iface, action: allow, fqdn: ["iface.test"]}`)
		c, br := rawProxy(t, w.proxy)
		fmt.Fprintf(c, "CONNECT iface.test:%d HTTP/1.1\r\nHost: iface.test\r\n\r\n", w.plain.Port())
		if resp, _ := readResponse(t, br, "CONNECT"); resp.StatusCode != 403 {
			t.Errorf("CONNECT to a name resolving to this host's %s: %d, want 403", local, resp.StatusCode)
		}
		c.Close()
		e := w.waitLog(bySrcPort(c))
		w.want(e, map[string]any{"action": "deny", "rule": "iface", "enforced": true})
		t.Logf("refused: %v", e["reason"])
	})
	t.Run("a public address of this host", func(t *testing.T) {
		w := newSelfWorld(t, `    - {name: host, action: allow, fqdn: ["host.test"]}`)
		w.gw.self.local.setRead(func() ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("198.51.100.7")}, nil
		})
		code, e := w.connect("host.test", 443)
		if code != 403 {
			t.Errorf("CONNECT host.test:443 (this host's 198.51.100.7) = %d, want 403", code)
		}
		w.want(e, map[string]any{"action": "deny", "rule": "host", "enforced": true,
			"reason": `destination 198.51.100.7 is a local address of this host, not covered by rule "host" destinations`})
		if got := refusals(t, w.gw, metrics.RefusedLocalAddress); got != 1 {
			t.Errorf("egressd_destination_refusals_total{reason=local_address} = %v, want 1", got)
		}
	})
}

// newProxyWorldFrom is a proxyWorld whose DNS server also answers recs.
func newProxyWorldFrom(t *testing.T, recs records, rules string) *proxyWorld {
	t.Helper()
	for n, a := range proxyRecords {
		recs[n] = a
	}
	w := &proxyWorld{world: &world{t: t}}
	w.plain = startHTTP(t, "127.0.0.1:0", false)
	cfg := fmt.Sprintf(`listeners:
  - {name: proxy, mode: explicit, address: 127.0.0.1:0}
resolver: %s
timeouts: %s
policy:
  default: deny
  rules:
%s
`, testnet.DNS(t, recs), defaultWorldTimeouts, rules)
	s := serveConfig(t, cfg, time.Second)
	w.gw, w.logs = s.Gateway, s.logs
	w.proxy = s.Addrs()["proxy"]
	return w
}

// TestHostAddrsCache: the interface addresses are read once per
// hostAddrsTTL at most, not per check, and a failed reading keeps the
// last addresses.
func TestHostAddrsCache(t *testing.T) {
	var h hostAddrs
	reads := 0
	fail := false
	h.setRead(func() ([]netip.Addr, error) {
		reads++
		if fail {
			return nil, fmt.Errorf("netlink: no")
		}
		return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil
	})
	for range 1000 {
		if ok, err := h.has(netip.MustParseAddr("192.0.2.1")); !ok || err != nil {
			t.Fatalf("has(192.0.2.1) = %v, %v; want true", ok, err)
		}
	}
	if reads != 1 {
		t.Errorf("1000 checks read the addresses %d times, want 1", reads)
	}
	fail = true
	h.snap.Load().at = time.Time{} // as if a second had passed
	if ok, err := h.has(netip.MustParseAddr("192.0.2.1")); !ok || err == nil {
		t.Errorf("after a failed reading: has(192.0.2.1) = %v, %v; want true and the error", ok, err)
	}
}
