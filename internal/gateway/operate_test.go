package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/admin"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/testnet"
)

// scrape fetches /metrics from the admin handler over a real socket and
// parses the exposition format.
func scrape(t *testing.T, g *Gateway) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(admin.Handler(admin.Options{Registry: g.Metrics().Registry, Ready: g.Ready}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mf
}

// value returns the value of the sample of family name whose labels
// include want, or -1 when there is none.
func value(mf map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := mf[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

func TestMetricsMoveAfterTraffic(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	before := scrape(t, w.gw)
	if v := value(before, "egressd_connections_total", map[string]string{"rule": "good"}); v != -1 {
		t.Fatalf("before traffic: connections{rule=good} = %v, want no sample", v)
	}
	// One allowed connection with 70 kB each way, one denied by rule.
	c, raw, err := dialTLS(w, "api.good.test")
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("egressd"), 10_000)
	go c.Write(msg)
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	c.Close()
	w.waitLog(bySrcPort(raw))
	_, raw2, _ := dialTLS(w, "x.ads.test")
	w.waitLog(bySrcPort(raw2))

	mf := scrape(t, w.gw)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"egressd_connections_total", map[string]string{"listener": "sni", "action": "allow", "rule": "good", "protocol": "tls", "fqdn_source": "sni"}, 1},
		{"egressd_connections_total", map[string]string{"listener": "sni", "action": "deny", "rule": "ads", "protocol": "tls", "fqdn_source": "sni"}, 1},
		{"egressd_bytes_total", map[string]string{"direction": "up"}, float64(len(msg))},
		{"egressd_bytes_total", map[string]string{"direction": "down"}, float64(len(msg))},
		{"egressd_peek_wait_seconds", nil, 2},
		{"egressd_dial_seconds", nil, 1},
		{"egressd_connection_duration_seconds", nil, 2},
		{"egressd_config_info", map[string]string{"hash": w.gw.State().Config.Hash}, 1},
		{"egressd_reloads_total", map[string]string{"result": "failure"}, 0},
		{"egressd_limit_rejections_total", map[string]string{"limit": "max_connections"}, 0},
		{"egressd_active_connections", nil, 0},
	} {
		// min 0: the sample must exist (value returns -1 when it does not).
		if got := value(mf, tc.name, tc.labels); got < tc.min {
			t.Errorf("%s%v = %v, want >= %v", tc.name, tc.labels, got, tc.min)
		}
	}
	if got := value(mf, "egressd_dns_queries_total", nil); got != -1 {
		t.Errorf("egressd_dns_queries_total = %v before any DNS query, want no sample", got)
	}
	// No client-supplied name became a label.
	for name, f := range mf {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if strings.Contains(l.GetValue(), ".test") || strings.Contains(l.GetValue(), "127.0.0.1") {
					t.Errorf("%s has label %s=%q: names and addresses must not be labels", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
}

// TestDNSMetrics: the forwarder's counters are exposed and move with real
// queries.
func TestDNSMetrics(t *testing.T) {
	upstream := testnet.DNS(t, baseRecords)
	w := newWorld(t, baseRecords, basePolicy+fmt.Sprintf("dns: {address: 127.0.0.1:0, upstreams: [%q], filter: true}\n", upstream))
	c := new(dns.Client)
	for _, name := range []string{"good.test.", "x.ads.test.", "other.test."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		if _, _, err := c.Exchange(m, w.gw.DNSAddr().String()); err != nil {
			t.Fatalf("query %s: %v", name, err)
		}
	}
	mf := scrape(t, w.gw)
	// good.test is allowed; the other two no allow rule could match.
	if got := value(mf, "egressd_dns_queries_total", map[string]string{"result": "forwarded"}); got != 1 {
		t.Errorf("egressd_dns_queries_total{result=forwarded} = %v, want 1", got)
	}
	if got := value(mf, "egressd_dns_queries_total", map[string]string{"result": "refused"}); got != 2 {
		t.Errorf("egressd_dns_queries_total{result=refused} = %v, want 2", got)
	}
	if got := value(mf, "egressd_dns_memory_entries", nil); got != 1 {
		t.Errorf("egressd_dns_memory_entries = %v, want 1", got)
	}
}

// holdTLS opens a TLS connection to an allowed name through the gateway
// and keeps it open until the test ends.
func holdTLS(t *testing.T, w *world, local string) (*tls.Conn, error) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	raw, err := d.Dial("tcp", w.addr.String())
	if err != nil {
		return nil, err // a reset can arrive during connect(2)
	}
	t.Cleanup(func() { raw.Close() })
	c := tls.Client(raw, &tls.Config{ServerName: "good.test", InsecureSkipVerify: true})
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		return nil, err
	}
	// A round trip proves the relay runs.
	if _, err := c.Write([]byte("ping")); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		return nil, err
	}
	return c, nil
}

// wantReset checks that the gateway reset a connection: the first read
// fails with ECONNRESET (SO_LINGER 0), not a clean EOF.
func wantReset(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if !isReset(err) {
		t.Errorf("read from refused connection: %v, want connection reset", err)
	}
}

// wantRefused connects and checks that the gateway resets the connection.
func wantRefused(t *testing.T, w *world) {
	t.Helper()
	c, err := net.Dial("tcp", w.addr.String())
	if isReset(err) {
		return // the reset came before connect(2) returned
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wantReset(t, c)
}

func TestLimits(t *testing.T) {
	t.Run("max_connections", func(t *testing.T) {
		w := newWorld(t, baseRecords, basePolicy+"limits: {max_connections: 2}\n")
		for i := range 2 {
			if _, err := holdTLS(t, w, ""); err != nil {
				t.Fatalf("connection %d of 2: %v", i+1, err)
			}
		}
		wantRefused(t, w)
		if got := value(scrape(t, w.gw), "egressd_limit_rejections_total", map[string]string{"limit": "max_connections"}); got != 1 {
			t.Errorf("limit_rejections{max_connections} = %v, want 1", got)
		}
		if got := value(scrape(t, w.gw), "egressd_active_connections", nil); got != 2 {
			t.Errorf("active_connections = %v, want 2", got)
		}
	})
	t.Run("max_connections_per_source", func(t *testing.T) {
		w := newWorld(t, baseRecords, basePolicy+"limits: {max_connections_per_source: 1}\n")
		if _, err := holdTLS(t, w, "127.0.0.1"); err != nil {
			t.Fatal(err)
		}
		if _, err := holdTLS(t, w, "127.0.0.1"); err == nil {
			t.Errorf("second connection from 127.0.0.1: handshake succeeded, want a reset")
		}
		e := w.waitLog(func(e entry) bool {
			return strings.HasPrefix(fmt.Sprint(e["reason"]), "limit max_connections_per_source")
		})
		w.want(e, map[string]any{"action": "deny", "reason": "limit max_connections_per_source (1) reached for 127.0.0.1"})
		// Another source is not affected.
		if _, err := holdTLS(t, w, "127.0.0.2"); err != nil {
			t.Errorf("connection from 127.0.0.2: %v", err)
		}
		if got := value(scrape(t, w.gw), "egressd_limit_rejections_total", map[string]string{"limit": "max_connections_per_source"}); got != 1 {
			t.Errorf("limit_rejections{max_connections_per_source} = %v, want 1", got)
		}
	})
	t.Run("max_pending_handshakes", func(t *testing.T) {
		w := newWorld(t, baseRecords, basePolicy+"limits: {max_pending_handshakes: 1}\n")
		// A started ClientHello keeps a connection pending until
		// client_hello (2 s here).
		slow, err := net.Dial("tcp", w.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer slow.Close()
		slow.Write([]byte{0x16, 0x03, 0x01})
		deadline := time.Now().Add(5 * time.Second)
		for w.gw.pending.Load() != 1 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		wantRefused(t, w)
		if got := value(scrape(t, w.gw), "egressd_limit_rejections_total", map[string]string{"limit": "max_pending_handshakes"}); got != 1 {
			t.Errorf("limit_rejections{max_pending_handshakes} = %v, want 1", got)
		}
	})
	t.Run("max_pending_handshakes per source", func(t *testing.T) {
		// One address floods the pending places with started hellos that
		// never end; it gets three quarters of them (6 of 8), and a client
		// from another address is still served.
		w := newWorld(t, baseRecords, basePolicy+"limits: {max_connections: 40, max_connections_per_source: 30, max_pending_handshakes: 8}\n")
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1")}}
		for range 10 {
			c, err := d.Dial("tcp", w.addr.String())
			if err != nil {
				continue // reset before connect returned
			}
			defer c.Close()
			c.Write([]byte{0x16, 0x03, 0x01})
		}
		// Wait until every one of the 10 is pending or rejected (the
		// hellos stay pending for client_hello, 2 s).
		rejected := func(limit string) int64 {
			return int64(value(scrape(t, w.gw), "egressd_limit_rejections_total", map[string]string{"limit": limit}))
		}
		deadline := time.Now().Add(5 * time.Second)
		for w.gw.pending.Load()+rejected("max_pending_handshakes_per_source")+rejected("max_pending_handshakes") < 10 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := w.gw.pending.Load(); got != 6 {
			t.Errorf("pending = %d after 10 stalled hellos from one address, want 6 (three quarters of 8)", got)
		}
		if _, err := holdTLS(t, w, "127.0.0.2"); err != nil {
			t.Errorf("a client from 127.0.0.2 while 127.0.0.1 holds its share: %v", err)
		}
		if got := value(scrape(t, w.gw), "egressd_limit_rejections_total", map[string]string{"limit": "max_pending_handshakes"}); got != 0 {
			t.Errorf("limit_rejections{max_pending_handshakes} = %v, want 0: one address never reaches the total", got)
		}
	})
}

func TestProxyProtocol(t *testing.T) {
	w := newWorldListener(t, baseRecords, basePolicy, 0, "proxy_protocol: true")
	// Rules see the header's source: put a source rule in front.
	reload(t, w, `policy:
  default: deny
  rules:
    - {name: blocked-src, action: deny, sources: ["192.0.2.66"]}
    - {name: good, action: allow, fqdn: ["good.test"], destinations: ["127.0.0.0/8"]}
`, "proxy_protocol: true")
	v2 := func(src string) []byte {
		return v2Header(t, src, w.addr.String())
	}
	tests := []struct {
		name     string
		header   []byte
		wantSrc  string
		wantRule string
		wantOK   bool
	}{
		{"v1", []byte("PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n"), "192.0.2.7:40000", "good", true},
		{"v2", v2("192.0.2.8:40001"), "192.0.2.8:40001", "good", true},
		{"v2 ipv6", v2("[2001:db8::8]:40002"), "[2001:db8::8]:40002", "good", true},
		{"v2 blocked source", v2("192.0.2.66:40003"), "192.0.2.66:40003", "blocked-src", false},
		{"v1 blocked source", []byte("PROXY TCP4 192.0.2.66 127.0.0.1 40004 443\r\n"), "192.0.2.66:40004", "blocked-src", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := net.Dial("tcp", w.addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			raw.Write(tt.header)
			c := tls.Client(raw, &tls.Config{ServerName: "good.test", InsecureSkipVerify: true})
			c.SetDeadline(time.Now().Add(5 * time.Second))
			err = c.Handshake()
			if (err == nil) != tt.wantOK {
				t.Errorf("handshake = %v, want success %v", err, tt.wantOK)
			}
			c.Close()
			e := w.waitLog(func(e entry) bool { return e["src"] == tt.wantSrc })
			w.want(e, map[string]any{"rule": tt.wantRule})
		})
	}
	t.Run("no header", func(t *testing.T) {
		_, raw, err := dialTLS(w, "good.test")
		if err == nil {
			t.Errorf("TLS without a PROXY header: handshake succeeded")
		}
		e := w.waitLog(bySrcPort(raw))
		if r := fmt.Sprint(e["reason"]); !strings.HasPrefix(r, "PROXY protocol expected: no PROXY protocol header") {
			t.Errorf("reason %q, want it to say the PROXY header is missing", r)
		}
		w.want(e, map[string]any{"action": "deny", "enforced": true})
	})
}

// TestProxyProtocolPendingShare: behind a balancer every connection's TCP
// peer is the balancer, so the pending share is taken by the source its
// PROXY header names: one real client that sends its header and then
// trickles its hello holds at most three quarters of
// max_pending_handshakes, and
// another client behind the same balancer is still served. Exempt, one
// such client held every pending place.
func TestProxyProtocolPendingShare(t *testing.T) {
	w := newWorldListener(t, baseRecords, basePolicy+"limits: {max_pending_handshakes: 4}\n", 0, "proxy_protocol: true")
	stalled := func(src string) net.Conn {
		c, err := net.Dial("tcp", w.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// A hello begun, never finished: pending until client_hello.
		c.Write(append(v2Header(t, src, w.addr.String()), 0x16, 0x03, 0x01, 0x02, 0x00, 0x01))
		return c
	}
	for i := range 3 { // the share: 3 of 4
		stalled(fmt.Sprintf("192.0.2.66:%d", 41000+i))
	}
	// Let the three be read and counted before the fourth comes.
	for deadline := time.Now().Add(10 * time.Second); value(scrape(t, w.gw), "egressd_pending_handshakes", nil) < 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("three stalled connections never counted as pending")
		}
	}
	fourth := stalled("192.0.2.66:41009")
	fourth.SetReadDeadline(time.Now().Add(time.Second)) // before client_hello (2s) would end it
	if _, err := fourth.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("a fourth stalled connection of one real source: %v; want it turned away", err)
	}
	// The client saw the reset; the gateway gives the pending place back
	// as the session ends, a moment later.
	for deadline := time.Now().Add(10 * time.Second); value(scrape(t, w.gw), "egressd_pending_handshakes", nil) > 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the turned-away connection's pending place was never given back")
		}
	}
	raw, err := net.Dial("tcp", w.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write(v2Header(t, "192.0.2.7:40000", w.addr.String()))
	c := tls.Client(raw, &tls.Config{ServerName: "good.test", InsecureSkipVerify: true})
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Errorf("another client behind the balancer: %v", err)
	}
}

// TestProxyProtocolFrom checks that with proxy_protocol_from only the
// listed balancers' headers are believed: a peer outside the list is reset
// before its header is read, whatever source the header names, and logged
// under its own address.
func TestProxyProtocolFrom(t *testing.T) {
	for _, tt := range []struct {
		name, from string
		wantOK     bool
	}{
		{"listed peer", `["192.0.2.0/24", "127.0.0.0/8"]`, true},
		{"unlisted peer", `["192.0.2.0/24"]`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorldListener(t, baseRecords, basePolicy, 0, "proxy_protocol: true\n    proxy_protocol_from: "+tt.from)
			raw, err := net.Dial("tcp", w.addr.String())
			switch {
			case err == nil:
				defer raw.Close()
				raw.Write(v2Header(t, "198.51.100.9:40000", w.addr.String()))
				c := tls.Client(raw, &tls.Config{ServerName: "good.test", InsecureSkipVerify: true})
				c.SetDeadline(time.Now().Add(5 * time.Second))
				err = c.Handshake()
				c.Close()
			case !isReset(err):
				t.Fatal(err)
			}
			// An unlisted peer is reset at once, sometimes before its
			// connect has returned.
			if (err == nil) != tt.wantOK {
				t.Errorf("connect and handshake = %v, want success %v", err, tt.wantOK)
			}
			if tt.wantOK {
				e := w.waitLog(func(e entry) bool { return e["src"] == "198.51.100.9:40000" })
				w.want(e, map[string]any{"action": "allow", "rule": "good"})
				return
			}
			e := w.waitLog(func(e entry) bool { return strings.HasPrefix(fmt.Sprint(e["src"]), "127.0.0.1:") })
			w.want(e, map[string]any{"action": "deny", "enforced": true,
				"reason": "PROXY protocol: peer 127.0.0.1 is not in proxy_protocol_from"})
		})
	}
}

// reload replaces the world's config with its listener (plus listenerYAML)
// and policyYAML.
func reload(t *testing.T, w *world, policyYAML, listenerYAML string) {
	t.Helper()
	old := w.gw.State().Config
	text := fmt.Sprintf("listeners:\n  - {name: sni, mode: sni, address: 127.0.0.1:0, upstream_port: %d%s}\nresolver: %s\ntimeouts: {first_bytes: 200ms, client_hello: 2s, connect: 2s, idle: 1m}\n%s",
		old.Listeners[0].UpstreamPort, ifNot(listenerYAML, ", "+listenerYAML), old.Resolver, policyYAML)
	cfg, err := config.Parse("test.yaml", []byte(text))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, text)
	}
	pol, _ := cfg.Compile()
	restart, err := w.gw.Reload(&State{Config: cfg, Policy: pol})
	if err != nil || len(restart) > 0 {
		t.Fatalf("Reload = %v, %v", restart, err)
	}
}

func ifNot(s, v string) string {
	if s == "" {
		return ""
	}
	return v
}

func v2Header(t *testing.T, src, dst string) []byte {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	b := []byte("\r\n\r\n\x00\r\nQUIT\n\x21")
	if s.Addr().Is4() {
		b = append(b, 0x11, 0, 12)
		if d.Addr().Is6() {
			t.Fatal("mixed families")
		}
		b = append(b, s.Addr().AsSlice()...)
		dd := d.Addr().As4()
		b = append(b, dd[:]...)
	} else {
		b = append(b, 0x21, 0, 36)
		b = append(b, s.Addr().AsSlice()...)
		dd := d.Addr().As16()
		if d.Addr().Is4() {
			dd = netip.AddrFrom16(netip.IPv6Unspecified().As16()).As16()
		}
		b = append(b, dd[:]...)
	}
	return append(b, byte(s.Port()>>8), byte(s.Port()), byte(d.Port()>>8), byte(d.Port()))
}

func TestReloadKeepsConnections(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	live, err := holdTLS(t, w, "")
	if err != nil {
		t.Fatal(err)
	}
	// The new policy denies good.test.
	reload(t, w, "policy: {default: deny, rules: [{name: no-good, action: deny, fqdn: [good.test]}]}\n", "")
	if _, err := holdTLS(t, w, ""); err == nil {
		t.Errorf("after reload, good.test still allowed")
	}
	w.waitLog(func(e entry) bool { return e["rule"] == "no-good" })
	// The connection from before still relays.
	live.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := live.Write([]byte("still")); err != nil {
		t.Fatal(err)
	}
	if got := make([]byte, 5); func() error { _, err := io.ReadFull(live, got); return err }() != nil || string(got) != "still" {
		t.Errorf("connection from before the reload stopped relaying")
	}
}

// TestRestartNeededAgainstRunning: what a reload reports as needing a
// restart is measured against what runs, not against the last file: a
// change kept until a restart is reported at every reload while the file
// differs from what runs, and no longer once the file is put back.
func TestRestartNeededAgainstRunning(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	st := w.gw.State()
	text := func(extra string) string {
		return fmt.Sprintf("listeners:\n  - {name: sni, mode: sni, address: 127.0.0.1:0, upstream_port: %d}\nresolver: %s\n%s\n%s",
			w.echo.Port(), st.Config.Resolver, extra, basePolicy)
	}
	runs := fmt.Sprintf("log: {format: %s}", st.Config.Log.Format)
	for _, step := range []struct {
		name, extra string
		want        []string // substrings of the restart list, in order
	}{
		{"log changed", "log: {format: text}", []string{"log format"}},
		{"another setting changed, the log still changed", "log: {format: text}\nmark: 0", []string{"log format"}},
		{"log put back", runs, nil},
		{"mark changed", runs + "\nmark: 0x2a", []string{"mark changed to 0x2a"}},
		{"mark put back", runs, nil},
	} {
		cfg, err := config.Parse("test.yaml", []byte(text(step.extra)))
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		pol, err := cfg.Compile()
		if err != nil {
			t.Fatal(err)
		}
		restart, err := w.gw.Reload(&State{Config: cfg, Policy: pol})
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		ok := len(restart) == len(step.want)
		for i := 0; ok && i < len(restart); i++ {
			ok = strings.Contains(restart[i], step.want[i])
		}
		if !ok {
			t.Errorf("%s: restart = %q, want %q", step.name, restart, step.want)
		}
	}
}

func TestReloadListeners(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	st := w.gw.State()
	// Add a second listener on a fixed free port, drop nothing.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	text := fmt.Sprintf("listeners:\n  - {name: sni, mode: sni, address: 127.0.0.1:0, upstream_port: %d}\n  - {name: second, mode: sni, address: 127.0.0.1:%d, upstream_port: %d}\nresolver: %s\nlog: {format: text}\nbusy_poll: 50us\n%s",
		w.echo.Port(), port, w.echo.Port(), st.Config.Resolver, basePolicy)
	cfg, err := config.Parse("test.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	pol, _ := cfg.Compile()
	restart, err := w.gw.Reload(&State{Config: cfg, Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	if len(restart) != 1 || !strings.Contains(restart[0], "log format") {
		t.Errorf("Reload restart = %q, want the log change only", restart)
	}
	if got := w.gw.loops.BusyPoll(); got != 50*time.Microsecond {
		t.Errorf("busy_poll after reload = %s, want 50µs", got)
	}
	addrs := w.gw.Addrs()
	if addrs["sni"] != w.addr || addrs["second"].Port() != uint16(port) {
		t.Fatalf("Addrs() after reload = %v", addrs)
	}
	w2 := *w
	w2.addr = addrs["second"]
	if _, err := holdTLS(t, &w2, ""); err != nil {
		t.Errorf("new listener: %v", err)
	}
	// A listener that cannot be bound fails the reload and changes nothing.
	busy, _ := net.Listen("tcp", "127.0.0.1:0")
	defer busy.Close()
	bad := strings.Replace(text, fmt.Sprintf("127.0.0.1:%d", port), busy.Addr().String(), 1)
	cfg2, _ := config.Parse("test.yaml", []byte(bad))
	pol2, _ := cfg2.Compile()
	if _, err := w.gw.Reload(&State{Config: cfg2, Policy: pol2}); err == nil {
		t.Errorf("Reload onto a busy address succeeded")
	}
	if w.gw.State().Config != cfg {
		t.Errorf("failed reload replaced the state")
	}
	// Dropping the second listener closes its socket.
	text1 := fmt.Sprintf("listeners:\n  - {name: sni, mode: sni, address: 127.0.0.1:0, upstream_port: %d}\nresolver: %s\nlog: {format: text}\n%s", w.echo.Port(), st.Config.Resolver, basePolicy)
	cfg3, _ := config.Parse("test.yaml", []byte(text1))
	pol3, _ := cfg3.Compile()
	if _, err := w.gw.Reload(&State{Config: cfg3, Policy: pol3}); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", w2.addr.String()); err == nil {
		c.Close()
		t.Errorf("removed listener still accepts")
	}
	if got := w.gw.loops.BusyPoll(); got != 0 {
		t.Errorf("busy_poll after a reload without it = %s, want off", got)
	}
}

func TestDrain(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	if ok, why := w.gw.Ready(); !ok {
		t.Fatalf("Ready() = false, %q before drain", why)
	}
	live, err := holdTLS(t, w, "")
	if err != nil {
		t.Fatal(err)
	}
	w.cancel() // as SIGTERM does; Serve drains with a 1 s grace
	deadline := time.Now().Add(5 * time.Second)
	for ok, _ := w.gw.Ready(); ok && time.Now().Before(deadline); ok, _ = w.gw.Ready() {
		time.Sleep(5 * time.Millisecond)
	}
	if ok, why := w.gw.Ready(); ok || why != "draining" {
		t.Errorf("Ready() = %v, %q while draining, want false, draining", ok, why)
	}
	// New connections are refused by the kernel: the listener is closed.
	for time.Now().Before(deadline) {
		c, err := net.Dial("tcp", w.addr.String())
		if err != nil {
			break
		}
		c.Close()
		time.Sleep(5 * time.Millisecond)
	}
	// The live connection still relays during the grace period.
	live.SetDeadline(time.Now().Add(5 * time.Second))
	live.Write([]byte("drain"))
	if _, err := io.ReadFull(live, make([]byte, 5)); err != nil {
		t.Errorf("live connection during drain: %v", err)
	}
	// After the grace period it is closed and Serve returns.
	select {
	case <-w.served:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the grace period")
	}
	if _, err := live.Read(make([]byte, 1)); err == nil {
		t.Errorf("live connection still open after the grace period")
	}
}

// TestShutdownDelay: with shutdown_delay, a drain fails /readyz at once
// but keeps accepting, and serving, new connections for the delay (a load
// balancer still sends some until it sees /readyz fail); a second signal
// (Abort) ends the delay, and the listener closes.
func TestShutdownDelay(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy+"shutdown_delay: 4m\n")
	w.cancel() // as SIGTERM does
	deadline := time.Now().Add(5 * time.Second)
	for ok, _ := w.gw.Ready(); ok && time.Now().Before(deadline); ok, _ = w.gw.Ready() {
		time.Sleep(5 * time.Millisecond)
	}
	if ok, why := w.gw.Ready(); ok || why != "draining" {
		t.Fatalf("Ready() = %v, %q while draining, want false, draining", ok, why)
	}
	for i := range 3 {
		if _, err := holdTLS(t, w, ""); err != nil {
			t.Fatalf("connection %d during shutdown_delay: %v", i, err)
		}
	}
	w.gw.Abort()
	for {
		c, err := net.Dial("tcp", w.addr.String())
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the listener still accepts after Abort ended the delay")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-w.served:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Abort")
	}
}

func TestAbortEndsDrain(t *testing.T) {
	cfg, err := config.Parse("t.yaml", []byte("listeners: [{name: a, mode: sni, address: 127.0.0.1:0}]\nshutdown_grace: 1h\n"))
	if err != nil {
		t.Fatal(err)
	}
	pol, _ := cfg.Compile()
	g := New(&State{Config: cfg, Policy: pol}, slog.New(slog.DiscardHandler), accesslog.New(io.Discard, "json"))
	ctx, cancel := context.WithCancel(context.Background())
	if err := g.Bind(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { g.Serve(ctx, 0); close(done) }()
	// A connection that never sends: it would hold the drain for the
	// whole first_bytes timeout; make it hold a job: a partial hello.
	c, err := net.Dial("tcp", g.Addrs()["a"].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel()
	g.Abort()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still draining after Abort (grace is 1h)")
	}
}

// TestDeferAccept: sni and explicit listeners defer accepts until the
// client's first bytes; a transparent listener must not (a server-first
// client, SSH or SMTP, sends nothing and would wait), and a reload that
// changes a listener's mode turns deferral on or off on the socket it
// keeps.
func TestDeferAccept(t *testing.T) {
	const sni, transparent = "sni, upstream_port: 443", "transparent"
	conf := func(a, c string) string {
		return fmt.Sprintf(`listeners:
  - {name: a, mode: %s, address: 127.0.0.1:0}
  - {name: b, mode: explicit, address: 127.0.0.1:0}
  - {name: c, mode: %s, address: 127.0.0.1:0}
policy: {default: deny}
`, a, c)
	}
	s := serveConfig(t, conf(sni, transparent), time.Second)
	check := func(when string, want map[string]bool) {
		t.Helper()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, bl := range s.listeners {
			name := bl.config().Name
			on, err := bl.deferAccept()
			if err != nil || on != want[name] {
				t.Errorf("%s: listener %s (%s): TCP_DEFER_ACCEPT on = %v (err %v), want %v", when, name, bl.config().Mode, on, err, want[name])
			}
		}
	}
	check("bound", map[string]bool{"a": true, "b": true, "c": false})
	before := s.Addrs()

	cfg, err := config.Parse("test.yaml", []byte(conf(transparent, sni)))
	if err != nil {
		t.Fatal(err)
	}
	pol, _ := cfg.Compile()
	if restart, err := s.Reload(&State{Config: cfg, Policy: pol}); err != nil || len(restart) != 0 {
		t.Fatalf("Reload: restart %q, err %v", restart, err)
	}
	if after := s.Addrs(); !maps.Equal(after, before) {
		t.Fatalf("Addrs() changed by the reload: %v, was %v", after, before)
	}
	check("after the modes swapped", map[string]bool{"a": false, "b": true, "c": true})
}

// TestDrainEndsDials: set-ups still dialling when the grace period ends
// give up then, as relays are closed then, instead of holding the drain
// (and the process) for a connect timeout. Two clients wait on a server
// that never answers: the first is dialled by a set-up goroutine, the
// second, its name cached by then, by the relay loop.
func TestDrainEndsDials(t *testing.T) {
	w := newWorldTimeouts(t, baseRecords, basePolicy, blackhole(t),
		"{first_bytes: 200ms, client_hello: 2s, connect: 1h, idle: 1m}")
	var clients []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", w.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(craftedHello("good.test"))
		clients = append(clients, c)
		time.Sleep(100 * time.Millisecond) // the first one's answers are cached
	}
	w.cancel() // the grace is 1 s
	select {
	case <-w.served:
	case <-time.After(30 * time.Second):
		t.Fatal("Serve still waiting for dials 30 s into a 1 s grace (connect timeout 1h)")
	}
	for i, c := range clients {
		e := w.waitLog(bySrcPort(c))
		if r, _ := e["reason"].(string); !strings.Contains(r, "upstream failed") || !strings.Contains(r, "shutting down") {
			t.Errorf("client %d: log reason %q, want the dial given up for the shutdown", i, r)
		}
	}
}

// TestDrainEndsHelloWaits: a client whose hello the relay loop is waiting
// for the rest of when the drain ends is closed then, with its line, as
// relays are, not held for its client_hello timeout.
func TestDrainEndsHelloWaits(t *testing.T) {
	w := newWorldTimeouts(t, baseRecords, basePolicy, 0,
		"{first_bytes: 200ms, client_hello: 1h, connect: 2s, idle: 1m}")
	c, err := net.Dial("tcp", w.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(craftedHello("good.test")[:40]) // and nothing more
	time.Sleep(100 * time.Millisecond)
	w.cancel() // the grace is 1 s
	select {
	case <-w.served:
	case <-time.After(30 * time.Second):
		t.Fatal("Serve still waiting for a hello 30 s into a 1 s grace (client_hello 1h)")
	}
	e := w.waitLog(bySrcPort(c))
	if r, _ := e["reason"].(string); !strings.Contains(r, "shutting down") {
		t.Errorf("log reason %q, want the wait given up for the shutdown", r)
	}
}
