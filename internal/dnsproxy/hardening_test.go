package dnsproxy

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/policy"
	"github.com/egressd/egressd/internal/testnet"
)

// A query name that fqdn.Normalize rejects (a '!' in a label, or any byte
// miekg renders as \DDD) is refused by the filter. Judged as "no name" it
// would see only rules without fqdn and slip past a deny rule for
// *.evil.test whenever an unnamed allow rule exists: a way to resolve, and
// exfiltrate data through, a denied zone.
func TestFilterRefusesInvalidNames(t *testing.T) {
	up := startUpstream(t, false,
		"x.evil.test. 60 IN A 203.0.113.9",
		`x!.evil.test. 60 IN A 203.0.113.9`,
	)
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}, Filter: true},
		policy.Rule{Name: "evil", Action: policy.Deny, FQDN: []string{"*.evil.test"}},
		policy.Rule{Name: "https-anywhere", Action: policy.Allow, Ports: []policy.PortRange{{Lo: 443, Hi: 443}}},
	)
	if r := ask(t, "udp", p.Addr(), "x.evil.test.", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Fatalf("control: x.evil.test rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	before := up.queries
	r := ask(t, "udp", p.Addr(), "x!.evil.test.", dns.TypeA)
	if r.Rcode != dns.RcodeRefused || up.queries != before {
		t.Errorf("x!.evil.test: rcode %s, %d answers, upstream saw %d new queries; want REFUSED and none forwarded",
			dns.RcodeToString[r.Rcode], len(r.Answer), up.queries-before)
	}
}

// The same with an address-only allow rule, which would have let the
// invalid name through by its answer's address.
func TestFilterRefusesInvalidNamesByAddress(t *testing.T) {
	up := startUpstream(t, false,
		"x.evil.test. 60 IN A 203.0.113.9",
		`x!.evil.test. 60 IN A 203.0.113.9`,
	)
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}, Filter: true},
		policy.Rule{Name: "evil", Action: policy.Deny, FQDN: []string{"*.evil.test"}},
		policy.Rule{Name: "net", Action: policy.Allow, Destinations: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}},
	)
	if r := ask(t, "udp", p.Addr(), "x.evil.test.", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Fatalf("control: x.evil.test rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	if r := ask(t, "udp", p.Addr(), "x!.evil.test.", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("x!.evil.test: rcode %s, answers %v; want REFUSED", dns.RcodeToString[r.Rcode], r.Answer)
	}
}

// A source outside dns.clients gets no answer at all, even to a message the
// DNS library would answer itself (two questions: FORMERR; NOTIFY: NOTIMP).
func TestNonClientGetsNoAnswer(t *testing.T) {
	up := startUpstream(t, false, "git.example.test. 60 IN A 198.51.100.10")
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr},
		Clients: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	m := new(dns.Msg)
	m.SetQuestion("git.example.test.", dns.TypeA)
	m.Question = append(m.Question, m.Question[0]) // QDCOUNT 2
	b, _ := m.Pack()
	c, err := net.Dial("udp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(b)
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 512)
	if n, err := c.Read(buf); err == nil {
		var r dns.Msg
		r.Unpack(buf[:n])
		t.Errorf("non-client got a %d-byte answer, rcode %s; want no answer (no reflection)", n, dns.RcodeToString[r.Rcode])
	}
}

// An upstream answer whose question is not the query's is a failed
// upstream: not forwarded, not recorded.
func TestAnswerMustMatchQuestion(t *testing.T) {
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Question = []dns.Question{{Name: "other.test.", Qtype: dns.TypeMX, Qclass: dns.ClassINET}}
		rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A 198.51.100.77")
		m.Answer = append(m.Answer, rr)
		w.WriteMsg(m)
	})
	upAddr := testnet.ServeDNS(t, h)
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{upAddr}})
	m := new(dns.Msg)
	m.SetQuestion("git.example.test.", dns.TypeA)
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if recorded := p.names.Resolved(client, "git.example.test", netip.MustParseAddr("198.51.100.77")); r.Rcode != dns.RcodeServerFailure || recorded {
		t.Errorf("upstream answer for another question: rcode %s, recorded %v; want SERVFAIL and nothing recorded",
			dns.RcodeToString[r.Rcode], recorded)
	}
}

// With default: allow and a block list (the usual shape of a deny list),
// an invalid name under a blocked zone is refused too.
func TestFilterRefusesInvalidNamesBlockList(t *testing.T) {
	up := startUpstream(t, false, `x!.evil.test. 60 IN A 203.0.113.9`)
	pol, err := policy.Compile([]policy.Rule{{Name: "evil", Action: policy.Deny, FQDN: []string{"*.evil.test"}}}, policy.Allow)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := pol.MayAllow(client, "x.evil.test", netip.Addr{}); ok {
		t.Fatal("control: x.evil.test may be allowed")
	}
	p := startProxyPolicy(t, Config{Upstreams: []netip.AddrPort{up.addr}, Filter: true}, pol, true)
	if r := ask(t, "udp", p.Addr(), "x!.evil.test.", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("x!.evil.test under default allow + deny *.evil.test: rcode %s, answers %v; want REFUSED", dns.RcodeToString[r.Rcode], r.Answer)
	}
	if r := ask(t, "udp", p.Addr(), "a\\032b.evil.test.", dns.TypeA); r.Rcode == dns.RcodeRefused {
		t.Logf("space-in-label variant refused")
	} else {
		t.Errorf(`"a\032b.evil.test" (space in a label) not refused: rcode %s`, dns.RcodeToString[r.Rcode])
	}
}

// CNAME cloaking: an allowed alias of a name a deny rule names is refused
// (and nothing is remembered); an alias of a name no rule names (a CDN) is
// answered.
func TestFilterRefusesAliasOfDeniedName(t *testing.T) {
	up := startUpstream(t, false,
		"track.example.test. 60 IN CNAME x.ads.test.",
		"x.ads.test. 60 IN A 198.51.100.66",
		"www.example.test. 60 IN CNAME edge.cdn.test.",
		"edge.cdn.test. 60 IN A 198.51.100.67",
	)
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}, Filter: true},
		policy.Rule{Name: "ads", Action: policy.Deny, FQDN: []string{"*.ads.test"}},
		policy.Rule{Name: "ex", Action: policy.Allow, FQDN: []string{"*.example.test"}},
		policy.Rule{Name: "rest", Action: policy.Deny},
	)
	r := ask(t, "udp", p.Addr(), "track.example.test.", dns.TypeA)
	n, _ := p.names.Lookup(client, netip.MustParseAddr("198.51.100.66"))
	if r.Rcode != dns.RcodeRefused || n != "" {
		t.Errorf("alias of a denied name: rcode %s, answers %v, memory %q; want REFUSED and no memory", dns.RcodeToString[r.Rcode], r.Answer, n)
	}
	r = ask(t, "udp", p.Addr(), "www.example.test.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
		t.Errorf("alias of a CDN name under a catch-all deny: rcode %s, answers %v; want it answered", dns.RcodeToString[r.Rcode], r.Answer)
	}
}

// One client address cannot hold more than its share of the queries in
// flight: with an upstream that never answers, 100 queries from one
// address leave 64 in flight and drop 36, and another address is still
// served (here: SERVFAIL once the silent upstream times out).
func TestInFlightSharePerSource(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go io.Copy(io.Discard, readerOf(silent))
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort(silent.LocalAddr().String())},
		Timeout: time.Second, RateLimit: 1000}, policy.Rule{Name: "all", Action: policy.Allow})

	greedy, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer greedy.Close()
	for i := range 100 {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("q%d.slow.test.", i), dns.TypeA)
		b, _ := m.Pack()
		greedy.Write(b)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Overloaded < 36 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := p.Stats().Overloaded; got != 36 {
		t.Errorf("100 queries in flight from one address: %d dropped, want 36 (64 may wait)", got)
	}
	other, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}, net.UDPAddrFromAddrPort(p.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	m := new(dns.Msg)
	m.SetQuestion("other.test.", dns.TypeA)
	c := &dns.Conn{Conn: other}
	if err := c.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	other.SetReadDeadline(time.Now().Add(5 * time.Second))
	r, err := c.ReadMsg()
	if err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("another address while one holds its share: %v %v, want an answer (SERVFAIL from the silent upstream)", r, err)
	}
}

// readerOf drains a PacketConn as an io.Reader, for io.Copy.
func readerOf(pc net.PacketConn) io.Reader {
	return readerFunc(func(b []byte) (int, error) { n, _, err := pc.ReadFrom(b); return n, err })
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }
