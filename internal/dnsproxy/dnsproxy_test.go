package dnsproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/namecache"
	"github.com/egressd/egressd/internal/policy"
	"github.com/egressd/egressd/internal/testnet"
)

// upstream is a real DNS server on 127.0.0.1:0 answering from a zone of
// RRs in presentation format. With truncateUDP every UDP answer comes back
// empty with TC set, so only TCP gets the records.
type upstream struct {
	addr        netip.AddrPort
	truncateUDP bool
	mu          sync.Mutex
	queries     int
}

func startUpstream(t *testing.T, truncateUDP bool, zone ...string) *upstream {
	t.Helper()
	u := &upstream{truncateUDP: truncateUDP}
	var rrs []dns.RR
	for _, z := range zone {
		rr, err := dns.NewRR(z)
		if err != nil {
			t.Fatalf("dns.NewRR(%q): %v", z, err)
		}
		rrs = append(rrs, rr)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		u.mu.Lock()
		u.queries++
		u.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(r)
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp && u.truncateUDP {
			m.Truncated = true
			w.WriteMsg(m)
			return
		}
		// Follow CNAMEs like a recursive resolver would.
		name := strings.ToLower(r.Question[0].Name)
		for range 8 {
			next := ""
			for _, rr := range rrs {
				h := rr.Header()
				if strings.ToLower(h.Name) != name {
					continue
				}
				if c, ok := rr.(*dns.CNAME); ok {
					m.Answer = append(m.Answer, rr)
					next = strings.ToLower(c.Target)
				} else if h.Rrtype == r.Question[0].Qtype {
					m.Answer = append(m.Answer, rr)
				}
			}
			if next == "" {
				break
			}
			name = next
		}
		if len(m.Answer) == 0 {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	u.addr = testnet.ServeDNS(t, h)
	return u
}

// proxy is a forwarder under test with its log lines.
type proxy struct {
	*Server
	names *namecache.Cache
	mu    sync.Mutex
	log   bytes.Buffer
}

func (p *proxy) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.Write(b)
}

func (p *proxy) lines(t *testing.T) []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(p.log.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Errorf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func startProxy(t *testing.T, cfg Config, rules ...policy.Rule) *proxy {
	t.Helper()
	return startProxyEnforce(t, cfg, true, rules...)
}

func startProxyEnforce(t *testing.T, cfg Config, enforce bool, rules ...policy.Rule) *proxy {
	t.Helper()
	pol, err := policy.Compile(rules, policy.Deny)
	if err != nil {
		t.Fatal(err)
	}
	return startProxyPolicy(t, cfg, pol, enforce)
}

// startProxyPolicy starts a forwarder that asks pol, set before it serves
// (a policy swapped in afterwards would race with the serving goroutines).
func startProxyPolicy(t *testing.T, cfg Config, pol *policy.Policy, enforce bool) *proxy {
	t.Helper()
	if !cfg.Address.IsValid() {
		cfg.Address = netip.MustParseAddrPort("127.0.0.1:0")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	p := &proxy{names: namecache.New(0, 0)}
	p.Server = New(cfg, p.names, func() (*policy.Policy, bool) { return pol, enforce }, slog.New(slog.NewTextHandler(io.Discard, nil)), accesslog.New(p, "json"))
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return p
}

func ask(t *testing.T, network string, server netip.AddrPort, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, server.String())
	if err != nil {
		t.Fatalf("%s query %s %s to %s: %v", network, name, dns.Type(qtype), server, err)
	}
	return r
}

var client = netip.MustParseAddr("127.0.0.1")

func TestForwardAndRecord(t *testing.T) {
	up := startUpstream(t, false,
		"git.example.test. 60 IN A 198.51.100.10",
		"www.example.test. 300 IN CNAME git.example.test.",
		"v6.example.test. 60 IN AAAA 2001:db8::10",
	)
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}, Remember: time.Minute})
	tests := []struct {
		network, name string
		qtype         uint16
		ip            string
	}{
		{"udp", "git.example.test.", dns.TypeA, "198.51.100.10"},
		{"tcp", "WWW.Example.Test.", dns.TypeA, "198.51.100.10"}, // through the CNAME
		{"udp", "v6.example.test.", dns.TypeAAAA, "2001:db8::10"},
	}
	for _, tt := range tests {
		r := ask(t, tt.network, p.Addr(), tt.name, tt.qtype)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			t.Fatalf("%s %s: rcode %s, %d answers; want an answer", tt.network, tt.name, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
		want := strings.ToLower(strings.TrimSuffix(tt.name, "."))
		if !p.names.Resolved(client, want, netip.MustParseAddr(tt.ip)) {
			t.Errorf("after %s: namecache has no %s -> %s for %s", tt.name, want, tt.ip, client)
		}
	}
	if got, _ := p.names.Lookup(netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("198.51.100.10")); got != "" {
		t.Errorf("another client's Lookup = %q, want nothing", got)
	}
	if s := p.Stats(); s.Forwarded != 3 || s.Recorded != 3 {
		t.Errorf("Stats() = %+v, want 3 forwarded and 3 recorded", s)
	}
}

func TestFailoverAndTruncation(t *testing.T) {
	// A UDP socket that reads nothing: queries to it time out.
	silent, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	up := startUpstream(t, true, "git.example.test. 60 IN A 198.51.100.10")
	p := startProxy(t, Config{
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort(silent.LocalAddr().String()), up.addr},
		Timeout:   200 * time.Millisecond,
	})
	r := ask(t, "udp", p.Addr(), "git.example.test.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("answer after failover and TCP retry: rcode %s, %v", dns.RcodeToString[r.Rcode], r.Answer)
	}
	if s := p.Stats(); s.TCPRetries != 1 {
		t.Errorf("TCPRetries = %d, want 1", s.TCPRetries)
	}
}

func TestAllUpstreamsDown(t *testing.T) {
	silent, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort(silent.LocalAddr().String())}, Timeout: 100 * time.Millisecond})
	r := ask(t, "udp", p.Addr(), "git.example.test.", dns.TypeA)
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode = %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	lines := p.lines(t)
	if len(lines) != 1 || lines[0]["kind"] != "dns" || lines[0]["result"] != "failed" {
		t.Errorf("log = %v, want one dns line with result failed", lines)
	}
}

func TestFilter(t *testing.T) {
	up := startUpstream(t, false,
		"git.example.test. 60 IN A 198.51.100.10",
		"byaddr.example.test. 60 IN A 192.0.2.7",
		"elsewhere.example.test. 60 IN A 203.0.113.7",
		"x.ads.test. 60 IN A 198.51.100.10",
	)
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}, Filter: true},
		policy.Rule{Name: "ads", Action: policy.Deny, FQDN: []string{"*.ads.test"}},
		policy.Rule{Name: "git", Action: policy.Allow, FQDN: []string{"git.example.test"}, Ports: []policy.PortRange{{Lo: 22, Hi: 22}}},
		policy.Rule{Name: "net", Action: policy.Allow, Destinations: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
	)
	tests := []struct {
		name  string
		qtype uint16
		want  int
	}{
		{"git.example.test.", dns.TypeA, dns.RcodeSuccess},
		{"byaddr.example.test.", dns.TypeA, dns.RcodeSuccess},    // its address is allowed by rule net
		{"byaddr.example.test.", dns.TypeTXT, dns.RcodeRefused},  // no address to judge
		{"elsewhere.example.test.", dns.TypeA, dns.RcodeRefused}, // answered, but nothing allows it
		{"x.ads.test.", dns.TypeA, dns.RcodeRefused},             // denied before any address rule
		{"nothing.test.", dns.TypeA, dns.RcodeRefused},           // NXDOMAIN: no address
	}
	for _, tt := range tests {
		r := ask(t, "udp", p.Addr(), tt.name, tt.qtype)
		if r.Rcode != tt.want {
			t.Errorf("%s %s: rcode %s, want %s", tt.name, dns.Type(tt.qtype), dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.want])
		}
	}
	refused := 0
	for _, l := range p.lines(t) {
		if l["kind"] == "dns" && l["result"] == "refused" && l["rcode"] == "REFUSED" {
			refused++
		}
	}
	if refused != 4 {
		t.Errorf("%d refused lines logged, want 4:\n%s", refused, p.log.String())
	}
	if _, ok := p.names.Lookup(client, netip.MustParseAddr("203.0.113.7")); ok {
		t.Errorf("a refused answer was recorded")
	}
}

func TestFilterReportOnly(t *testing.T) {
	up := startUpstream(t, false, "blocked.example.test. 60 IN A 198.51.100.10")
	p := startProxyEnforce(t, Config{Upstreams: []netip.AddrPort{up.addr}, Filter: true}, false,
		policy.Rule{Name: "git", Action: policy.Allow, FQDN: []string{"git.example.test"}})
	if r := ask(t, "udp", p.Addr(), "blocked.example.test.", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("report-only: rcode %s, %d answers; want the upstream's answer", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	lines := p.lines(t)
	if len(lines) != 1 || lines[0]["result"] != "would-refuse" {
		t.Errorf("log = %v, want one would-refuse line", lines)
	}
	if s := p.Stats(); s.WouldRefuse != 1 || s.Refused != 0 {
		t.Errorf("Stats() = %+v, want 1 would-refuse, 0 refused", s)
	}
}

func TestStripECH(t *testing.T) {
	const rr = `svc.example.test. 60 IN HTTPS 1 . alpn="h2" ech="AEX+DQBBugAgACAB8bR0yn4Ff8y2mzF2zjYrmZ4tqaT7kX3Q7HszH8rjSQAEAAEAAQASY292ZXIuZXhhbXBsZS50ZXN0AAA="`
	up := startUpstream(t, false, rr)
	for _, strip := range []bool{false, true} {
		t.Run(fmt.Sprint("strip_ech=", strip), func(t *testing.T) {
			p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}, StripECH: strip})
			r := ask(t, "udp", p.Addr(), "svc.example.test.", dns.TypeHTTPS)
			if len(r.Answer) != 1 {
				t.Fatalf("answer = %v, want one HTTPS record", r.Answer)
			}
			h := r.Answer[0].(*dns.HTTPS)
			hasECH, hasALPN := false, false
			for _, kv := range h.Value {
				hasECH = hasECH || kv.Key() == dns.SVCB_ECHCONFIG
				hasALPN = hasALPN || kv.Key() == dns.SVCB_ALPN
			}
			if hasECH == strip || !hasALPN {
				t.Errorf("HTTPS record %s: ech present %v, alpn present %v; want ech %v, alpn kept", h, hasECH, hasALPN, !strip)
			}
			// A config the client was handed is remembered (real ECH can
			// then be told from GREASE); a stripped one never reached it.
			if got := p.names.ECHConfigured(client, "cover.example.test", 0xba); got == strip {
				t.Errorf("ECHConfigured(cover.example.test, 0xba) = %v, want %v", got, !strip)
			}
		})
	}
}

func TestRateLimit(t *testing.T) {
	up := startUpstream(t, false, "git.example.test. 60 IN A 198.51.100.10")
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}, RateLimit: 3})
	fixed := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p.limit.mu.Lock()
	p.limit.now = func() time.Time { return fixed }
	p.limit.mu.Unlock()
	answered := 0
	for range 6 {
		m := new(dns.Msg)
		m.SetQuestion("git.example.test.", dns.TypeA)
		c := &dns.Client{Net: "udp", Timeout: 300 * time.Millisecond}
		if _, _, err := c.Exchange(m, p.Addr().String()); err == nil {
			answered++
		}
	}
	if answered != 3 {
		t.Errorf("%d of 6 queries answered within one window, want 3 (rate_limit 3)", answered)
	}
	s := p.Stats()
	if s.RateLimited != 3 {
		t.Errorf("RateLimited = %d, want 3", s.RateLimited)
	}
	dropped := 0
	for _, l := range p.lines(t) {
		if l["result"] == "dropped" {
			dropped++
		}
	}
	if dropped != 1 {
		t.Errorf("%d dropped lines logged, want 1 per source and second", dropped)
	}
}

// TestRateLimitTableHeldByOneHost: a host that sends its queries from
// many addresses of its IPv6 /64 (each a fresh source, as far as
// addresses go) takes one place in the limiter's table, not all of them:
// another client's first query of the second is still counted and
// answered.
func TestRateLimitTableHeldByOneHost(t *testing.T) {
	l := newLimiter(200)
	fixed := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l.now = func() time.Time { return fixed }
	base := netip.MustParseAddr("2001:db8:1:2::").As16()
	for i := range maxLimitedSources {
		a := base
		a[12], a[13], a[14], a[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		l.allow(netip.AddrFrom16(a))
	}
	if ok, _ := l.allow(netip.MustParseAddr("10.0.0.7")); !ok {
		t.Error("another client's first query was refused: one host's addresses filled the table")
	}
}

func TestMalformedQueries(t *testing.T) {
	up := startUpstream(t, false, "git.example.test. 60 IN A 198.51.100.10")
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	c, err := net.Dial("udp4", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	twoQuestions := new(dns.Msg)
	twoQuestions.SetQuestion("a.test.", dns.TypeA)
	twoQuestions.Question = append(twoQuestions.Question, twoQuestions.Question[0])
	wire2, _ := twoQuestions.Pack()
	update := new(dns.Msg)
	update.SetUpdate("example.test.")
	wireU, _ := update.Pack()
	for _, b := range [][]byte{
		{0x12},                         // shorter than a header
		bytes.Repeat([]byte{0xff}, 40), // a header claiming everything, then junk
		append([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, 0xc0, 0x0c), // a name that points at itself
		wire2,
		wireU,
	} {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	// Everyone else is still served.
	if r := ask(t, "udp", p.Addr(), "git.example.test.", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("after malformed queries: answer %v, want one A", r.Answer)
	}
	up.mu.Lock()
	n := up.queries
	up.mu.Unlock()
	if n != 1 {
		t.Errorf("upstream got %d queries, want 1: malformed ones must not be forwarded", n)
	}
	if s := p.Stats(); s.Malformed < 4 {
		t.Errorf("Malformed = %d, want at least 4", s.Malformed)
	}
	malformed := 0
	for _, l := range p.lines(t) {
		if l["result"] == "malformed" {
			malformed++
		}
	}
	if malformed > 2 { // the junk may straddle a second boundary
		t.Errorf("%d malformed lines logged for one burst, want at most one per second", malformed)
	}
}

// TestOversizedAnswer: an answer larger than the client's UDP buffer is
// truncated with TC set (the client then asks over TCP, and gets it all).
func TestOversizedAnswer(t *testing.T) {
	var zone []string
	for i := range 60 {
		zone = append(zone, fmt.Sprintf("big.example.test. 60 IN A 198.51.100.%d", i+1))
	}
	up := startUpstream(t, false, zone...)
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	udp := ask(t, "udp", p.Addr(), "big.example.test.", dns.TypeA)
	if !udp.Truncated || len(udp.Answer) >= 60 {
		t.Errorf("UDP without EDNS: TC %v with %d answers; want TC and fewer than 60", udp.Truncated, len(udp.Answer))
	}
	if tcp := ask(t, "tcp", p.Addr(), "big.example.test.", dns.TypeA); tcp.Truncated || len(tcp.Answer) != 60 {
		t.Errorf("TCP: TC %v with %d answers; want all 60", tcp.Truncated, len(tcp.Answer))
	}
	// Recorded from the whole answer, whatever reached the client, up to
	// maxRecordedPerFamily.
	if n := p.names.Stats().Entries; n != maxRecordedPerFamily || n <= len(udp.Answer) {
		t.Errorf("%d names recorded, want %d (more than the %d that fit in the truncated answer)", n, maxRecordedPerFamily, len(udp.Answer))
	}
}

// TestClients: a source outside dns.clients gets no answer at all, so a
// forwarder on a public address is neither an open resolver nor a reflector.
func TestClients(t *testing.T) {
	up := startUpstream(t, false, "git.example.test. 60 IN A 198.51.100.10")
	for _, tc := range []struct {
		name     string
		clients  []netip.Prefix
		answered bool
	}{
		{"default: private and loopback sources", nil, true},
		{"listed", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, true},
		{"not listed", []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}, Clients: tc.clients})
			m := new(dns.Msg)
			m.SetQuestion("git.example.test.", dns.TypeA)
			c := &dns.Client{Net: "udp", Timeout: 500 * time.Millisecond}
			_, _, err := c.Exchange(m, p.Addr().String())
			if (err == nil) != tc.answered {
				t.Errorf("query from 127.0.0.1: err %v, want answered %v", err, tc.answered)
			}
			if s := p.Stats(); (s.NotClient == 0) != tc.answered {
				t.Errorf("NotClient = %d, want answered %v", s.NotClient, tc.answered)
			}
		})
	}
}

// TestListenOwnFamilyOnly: the forwarder on 0.0.0.0 answers IPv4 only, on
// UDP and TCP (Go's default would bind [::] with IPV6_V6ONLY off).
func TestListenOwnFamilyOnly(t *testing.T) {
	pc, ln, err := listen(netip.MustParseAddrPort("0.0.0.0:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	defer ln.Close()
	port := netip.MustParseAddrPort(pc.LocalAddr().String()).Port()
	v6 := netip.AddrPortFrom(netip.IPv6Loopback(), port).String()
	if c, err := net.Dial("tcp", v6); err == nil {
		c.Close()
		t.Errorf("the DNS forwarder's TCP socket on 0.0.0.0 answers on %s", v6)
	}
	// UDP: a datagram to a port nobody has on ::1 draws a port-unreachable,
	// which a connected socket reports on its next read. The kernel rate-
	// limits those messages, so a lost one is tried again.
	c, err := net.Dial("udp", v6)
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	defer c.Close()
	for try := 1; ; try++ {
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if errors.Is(err, syscall.ECONNREFUSED) {
			break
		}
		if try == 3 {
			t.Fatalf("datagrams to %s: read %v, want connection refused (nobody bound there)", v6, err)
		}
	}
}

// TestWildcardAnswersFromQueriedAddress: a forwarder bound to 0.0.0.0
// answers each query from the address it was sent to. Asked on 127.0.0.2,
// an answer from 127.0.0.1 would be dropped by the client's connected
// socket, as a client on a host with several addresses would drop it.
func TestWildcardAnswersFromQueriedAddress(t *testing.T) {
	up := startUpstream(t, false, "git.example.test. 60 IN A 198.51.100.10")
	p := startProxy(t, Config{Address: netip.MustParseAddrPort("0.0.0.0:0"), Upstreams: []netip.AddrPort{up.addr}})
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), p.Addr().Port())
	r := ask(t, "udp", to, "git.example.test.", dns.TypeA) // fails the test if no answer comes from to
	if len(r.Answer) != 1 {
		t.Errorf("answer from %s: %v", to, r.Answer)
	}
}
