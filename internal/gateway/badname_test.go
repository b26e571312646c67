package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/peek"
	"github.com/egressd/egressd/internal/testnet"
)

// TestJudgeInvalidNames: a transparent listener decides a connection that
// carries no name on its address, so a rule that allows an address range
// lets it through whatever the deny rules before it say about names. A
// client that sent a name that is no valid one (a port after it, a space,
// a NUL) must not be decided as one that sent none: servers tidy such a
// name up (nginx cuts an SNI at ':') and act on the name the policy
// denies. It is refused, as the DNS forwarder refuses such a question. An
// IP literal names no server; it stays decided on the address.
func TestJudgeInvalidNames(t *testing.T) {
	g := configured(t, `listeners:
  - {name: t, mode: transparent, address: 127.0.0.1:0}
policy:
  default: deny
  rules:
    - {name: ads, action: deny, fqdn: ["*.ads.test"]}
    - {name: net, action: allow, destinations: ["198.51.100.0/24"]}
`)
	st := g.State()
	orig := netip.MustParseAddrPort("198.51.100.7:443")
	for _, tc := range []struct {
		name, sni, action, fqdn, reason string
	}{
		{"a valid name denied", "x.ads.test", "deny", "x.ads.test", `rule "ads"`},
		{"a valid name allowed by address", "ok.test", "allow", "ok.test", `rule "net"`},
		{"a port after the name", "x.ads.test:443", "deny", "", "not a valid name"},
		{"a space after the name", "x.ads.test ", "deny", "", "not a valid name"},
		{"a NUL inside", "x.ads.test\x00.ok.test", "deny", "", "not a valid name"},
		{"an empty label", "x..ads.test", "deny", "", "not a valid name"},
		{"an odd IPv4 spelling", "0x7f.1", "deny", "", "not a valid name"},
		{"an IP literal", "198.51.100.7", "allow", "", `rule "net"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := peekBytes(t, craftedHello(tc.sni))
			rec := &accesslog.Record{Src: netip.MustParseAddrPort("10.0.0.5:40000")}
			g.judge(context.Background(), st, &st.Config.Listeners[0], rec, &p, orig)
			if string(rec.Action) != tc.action || rec.FQDN != tc.fqdn || !strings.Contains(rec.Reason, tc.reason) {
				t.Errorf("SNI %q: %s, fqdn %q, reason %q; want %s, fqdn %q, a reason with %q", tc.sni, rec.Action, rec.FQDN, rec.Reason, tc.action, tc.fqdn, tc.reason)
			}
		})
	}
}

// peekBytes is what peek makes of a client's first bytes b.
func peekBytes(t *testing.T, b []byte) peek.Result {
	t.Helper()
	client, server := testnet.Pair(t)
	if _, err := client.Write(b); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	p := peek.Peek(server, peek.Deadlines{FirstBytes: now.Add(5 * time.Second), Complete: now.Add(5 * time.Second)})
	if p.Protocol != peek.TLS || !p.HelloOK {
		t.Fatalf("peek of the crafted hello: %s, hello parsed %v", p.Protocol, p.HelloOK)
	}
	return p
}

// TestHelloThatReadsAsRequest: a ClientHello whose record and handshake
// headers are bytes Netty's HTTP decoder skips before a request line
// (all 0x20 or under), and whose random spells a request line, is read
// by such a server as an HTTP request for the Host it names, while egressd
// decides the SNI. It is refused; an ordinary hello is not.
func TestHelloThatReadsAsRequest(t *testing.T) {
	g := configured(t, `listeners:
  - {name: t, mode: transparent, address: 127.0.0.1:0}
policy:
  default: deny
  rules:
    - {name: ok, action: allow, destinations: ["198.51.100.0/24"]}
`)
	st := g.State()
	orig := netip.MustParseAddrPort("198.51.100.7:80")
	polyglot := polyglotHello("ok.test")
	plain := testnet.ClientHello("ok.test", []byte{0x13, 0x01}, []byte{0})
	for _, tc := range []struct {
		name   string
		hello  []byte
		action string
	}{
		{"a hello that reads as a request", polyglot, "deny"},
		{"an ordinary hello", plain, "allow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := peekBytes(t, tc.hello)
			rec := &accesslog.Record{Src: netip.MustParseAddrPort("10.0.0.5:40000")}
			g.judge(context.Background(), st, &st.Config.Listeners[0], rec, &p, orig)
			if string(rec.Action) != tc.action {
				t.Errorf("%s (% x…): %s, %q; want %s", tc.name, tc.hello[:12], rec.Action, rec.Reason, tc.action)
			}
		})
	}
}

// TestFlowsShareConnectionBudget: QUIC flows count against
// max_connections and max_connections_per_source together with TCP
// connections. With a budget each, one source's flows and connections
// could hold twice the sockets the limits were derived for.
func TestFlowsShareConnectionBudget(t *testing.T) {
	g := configured(t, `listeners:
  - {name: t, mode: transparent, address: 127.0.0.1:0}
limits: {max_connections: 4, max_connections_per_source: 3, max_pending_handshakes: 4}
`)
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	var releases []func()
	for i := range 3 {
		release, ok := g.admitFlow(a)
		if !ok {
			t.Fatalf("flow %d of one source refused within its share of 3", i+1)
		}
		releases = append(releases, release)
	}
	if _, ok := g.admitFlow(a); ok {
		t.Error("a fourth flow of one source admitted past max_connections_per_source 3")
	}
	release, ok := g.admitFlow(b)
	if !ok {
		t.Fatal("another source's flow refused with a place left")
	}
	if _, _, _, ok := g.count(b, false); ok {
		t.Error("a TCP connection counted past max_connections 4 while 4 flows are held")
	}
	release()
	if _, _, _, ok := g.count(b, false); !ok {
		t.Error("a TCP connection refused once a flow gave its place back")
	}
	for _, r := range releases {
		r()
	}
}

// configured is a gateway of the config yaml, not bound: for tests of its
// decisions and counts without sockets of its own.
func configured(t *testing.T, yaml string) *Gateway {
	t.Helper()
	cfg, err := config.Parse("t.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := cfg.Compile()
	if err != nil {
		t.Fatal(err)
	}
	return New(&State{Config: cfg, Policy: pol}, slog.New(slog.DiscardHandler), accesslog.New(io.Discard, "json"))
}

// polyglotHello is a ClientHello for name that also reads as an HTTP
// request line to Netty: its record and handshake lengths are bytes of
// 0x20 or under (cipher suites bring the record to 0x0110 or 0x0111
// bytes: 01 10 and 00 01 0c), and its random spells a request for
// another Host.
func polyglotHello(name string) []byte {
	base := len(testnet.ClientHello(name, nil, []byte{0})) - 5
	suites := make([]byte, (0x110-base)&^1)
	for i := 0; i+1 < len(suites); i += 2 {
		suites[i], suites[i+1] = 0x13, 0x01
	}
	h := testnet.ClientHello(name, suites, []byte{0})
	copy(h[11:], "GET /x HTTP/1.1\r\nHost: denied.te") // the random's 32 bytes
	return h
}

// TestHelloThatReadsAsRequestInTunnel: the same hello inside a CONNECT
// tunnel to its own name passes tunnel_sni (the names match); it is
// refused all the same.
func TestHelloThatReadsAsRequestInTunnel(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	srv, heads := headsServer(t, "Host")
	c, br := tunnel(t, w.proxy, fmt.Sprintf("good.test:%d", srv.Port()))
	c.Write(polyglotHello("good.test"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(br)
	unread(t, heads, got)
	e := w.waitLog(bySrcPort(c))
	if r, _ := e["reason"].(string); e["action"] != "deny" || !strings.Contains(r, "also read as an HTTP request line") {
		t.Errorf("line %v, reason %q", e["action"], r)
	}
}

// TestUncheckedNameSaysSo: under sni_destination: verify, a name is
// checked against the destination when it is what allowed the
// connection. One allowed by its address or port instead is not, and the
// line's reason says so: its fqdn is only what the client claimed (a
// client going to a denied name's server may claim any other).
func TestUncheckedNameSaysSo(t *testing.T) {
	for _, tc := range []struct{ mode, want string }{
		{"verify", "not checked against the destination"},
		{"trust", ""},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			g := configured(t, `listeners:
  - {name: t, mode: transparent, address: 127.0.0.1:0, sni_destination: `+tc.mode+`}
policy:
  default: deny
  rules:
    - {name: evil, action: deny, fqdn: ["*.evil.test"]}
    - {name: https, action: allow, ports: [443]}
`)
			st := g.State()
			p := peekBytes(t, craftedHello("www.good.test"))
			rec := &accesslog.Record{Src: netip.MustParseAddrPort("10.0.0.5:40000")}
			g.judge(context.Background(), st, &st.Config.Listeners[0], rec, &p, netip.MustParseAddrPort("198.51.100.7:443"))
			got := strings.Contains(rec.Reason, "not checked against the destination")
			if rec.Action != accesslog.Allow || got != (tc.want != "") {
				t.Errorf("%s, reason %q; want allow, a note that the name was not checked: %v", rec.Action, rec.Reason, tc.want != "")
			}
		})
	}
}
