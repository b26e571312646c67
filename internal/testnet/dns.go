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

// DNS serves fixed A and AAAA records over UDP and TCP on 127.0.0.1 and
// returns its address. Names are given without the trailing dot; a name not in records
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
	tb.Helper()
	h := dns.HandlerFunc(func(rw dns.ResponseWriter, q *dns.Msg) {
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
	return ServeDNSAt(tb, addr, h).String()
}

// ServeDNS serves h over UDP and TCP on one free port of 127.0.0.1 until
// the test ends, and returns the address. It is the tests' one DNS server:
// DNS gives it fixed records, other tests a handler of their own
// (truncated answers, slow or lying upstreams).
func ServeDNS(tb testing.TB, h dns.Handler) netip.AddrPort {
	tb.Helper()
	return ServeDNSAt(tb, "127.0.0.1:0", h)
}

// ServeDNSAt is ServeDNS on a given address, in the network namespace of
// the calling thread.
func ServeDNSAt(tb testing.TB, addr string, h dns.Handler) netip.AddrPort {
	tb.Helper()
	// TCP takes the port the kernel picked for UDP, which an outgoing TCP
	// connection may hold on a busy machine: then another port is tried.
	var pc net.PacketConn
	var ln net.Listener
	for attempt := 0; ln == nil; attempt++ {
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			tb.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close()
			if attempt == 8 || !strings.HasSuffix(addr, ":0") {
				tb.Fatal(err)
			}
		}
	}
	ServeDNSOn(tb, pc, ln, h)
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// ServeDNSOn serves h on sockets made elsewhere (in another network
// namespace, say), one UDP and one TCP, until the test ends; it returns
// once both serve.
func ServeDNSOn(tb testing.TB, pc net.PacketConn, ln net.Listener, h dns.Handler) {
	tb.Helper()
	servers := []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}}
	var wg sync.WaitGroup
	for _, s := range servers {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { s.ActivateAndServe() })
		<-started
	}
	tb.Cleanup(func() {
		for _, s := range servers {
			s.Shutdown()
		}
		wg.Wait()
	})
}
