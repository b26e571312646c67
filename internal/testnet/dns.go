package testnet

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// DNS serves fixed A and AAAA records over UDP on 127.0.0.1 and returns its
// address. Names are given without the trailing dot; a name not in records
// is NXDOMAIN. The server stops when the test ends.
func DNS(tb testing.TB, records map[string][]string) string {
	tb.Helper()
	return DNSAt(tb, "127.0.0.1:0", records)
}

// DNSAt is DNS on a given address (a system resolver's nameserver must be
// on port 53), in the network namespace of the calling thread.
func DNSAt(tb testing.TB, addr string, records map[string][]string) string {
	tb.Helper()
	return serveDNS(tb, addr, records, nil)
}

// DNSAsked is DNS that also reports, through asked, every name it has been
// asked for so far (without the trailing dot), in order: tests of what
// egressd must never resolve.
func DNSAsked(tb testing.TB, records map[string][]string) (addr string, asked func() []string) {
	tb.Helper()
	var mu sync.Mutex
	var names []string
	addr = serveDNS(tb, "127.0.0.1:0", records, func(name string) {
		mu.Lock()
		names = append(names, name)
		mu.Unlock()
	})
	return addr, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(names)
	}
}

func serveDNS(tb testing.TB, addr string, records map[string][]string, onQuery func(string)) string {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(rw dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := strings.TrimSuffix(q.Question[0].Name, ".")
		if onQuery != nil {
			onQuery(name)
		}
		ans, ok := records[name]
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		for _, a := range ans {
			ip := netip.MustParseAddr(a)
			hdr := dns.RR_Header{Name: q.Question[0].Name, Class: dns.ClassINET, Ttl: 60}
			switch {
			case ip.Is4() && q.Question[0].Qtype == dns.TypeA:
				hdr.Rrtype = dns.TypeA
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: ip.AsSlice()})
			case ip.Is6() && q.Question[0].Qtype == dns.TypeAAAA:
				hdr.Rrtype = dns.TypeAAAA
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()})
			}
		}
		rw.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	go srv.ActivateAndServe()
	tb.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}
