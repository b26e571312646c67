package dnsproxy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/testnet"
)

// dns.timeout above 2 s is honoured: an upstream answering after 3 s with
// a 5 s timeout is answered, not SERVFAIL at the DNS library's 2 s default.
func TestUpstreamTimeoutHonoured(t *testing.T) {
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		time.Sleep(3 * time.Second)
		m := new(dns.Msg)
		m.SetReply(r)
		rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A 198.51.100.10")
		m.Answer = append(m.Answer, rr)
		w.WriteMsg(m)
	})
	upAddr := testnet.ServeDNS(t, h)
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{upAddr}, Timeout: 5 * time.Second})
	m := new(dns.Msg)
	m.SetQuestion("slowish.example.test.", dns.TypeA)
	c := &dns.Client{Net: "udp", Timeout: 8 * time.Second}
	start := time.Now()
	r, _, err := c.Exchange(m, p.Addr().String())
	if err != nil || r.Rcode != dns.RcodeSuccess {
		t.Errorf("upstream answering in 3s with timeout 5s: err %v, rcode %v after %v; log %v", err, r, time.Since(start), p.lines(t))
	}
}
