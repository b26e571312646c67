package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/testnet"
)

// Tests of what one client can do to the others: each is an attack that
// worked once.

// TestTCPClientThatNeverReads: a client pipelines 100 queries with ~60 KB
// answers over one TCP connection with a small receive buffer and never
// reads. (Answers of 3 KB would all fit in the forwarder's send buffer,
// which Linux grows to several MB on loopback: tcp_wmem; and the DNS
// library serves at most 128 queries per connection.) The forwarder's
// write blocks once both socket buffers are full; it must hold no query
// slot meanwhile, and must not hold Shutdown, which the DNS library
// would wait on for ever (it only sets read deadlines).
func TestTCPClientThatNeverReads(t *testing.T) {
	// 240 strings of 250 bytes: one TXT record of about 60 KB.
	txt := strings.Repeat(`"`+strings.Repeat("x", 250)+`" `, 240)
	up := startUpstream(t, true, "big.example.test. 60 IN TXT "+txt)
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}, RateLimit: 10000})

	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return err
	}}
	c, err := d.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dc := &dns.Conn{Conn: c}
	for i := range 100 {
		m := new(dns.Msg)
		m.SetQuestion("big.example.test.", dns.TypeTXT)
		m.Id = uint16(i + 1)
		if err := dc.WriteMsg(m); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	// Wait until the forwarder is stuck writing: answers have stopped
	// coming although queries are left (the upstream's count stalls).
	asked := func() int { up.mu.Lock(); defer up.mu.Unlock(); return up.queries }
	for last, deadline := -1, time.Now().Add(10*time.Second); time.Now().Before(deadline); {
		time.Sleep(300 * time.Millisecond)
		n := asked()
		if n == last {
			break
		}
		last = n
	}
	t.Logf("upstream asked %d times (two per query: UDP, then TCP)", asked())
	// Stuck writing, it holds no query slot: those bound the queries
	// being forwarded, and everyone else's depend on them.
	for deadline := time.Now().Add(10 * time.Second); len(p.slots) > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n, m := len(p.slots), p.inFlight.Open(client); n != 0 || m != 0 {
		t.Errorf("while its answer waits to be written: %d query slots held, %d queries in flight for %s; want 0", n, m, client)
	}
	if n := p.tcpLimit.open(client); n != 1 {
		t.Fatalf("%d TCP connections open from %s, want 1: the forwarder is not stuck writing to it, and this test shows nothing", n, client)
	}

	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p.Shutdown(ctx)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		// Unblock the forwarder (our unread data makes this a reset) so
		// that the test and its cleanup end.
		c.Close()
		<-done
		t.Fatal("Shutdown with a 1 s context still waiting after 20 s on a TCP client that does not read")
	}
	if n := len(p.slots); n != 0 {
		t.Errorf("after Shutdown: %d query slots held, want 0", n)
	}
	if n := p.inFlight.Open(client); n != 0 {
		t.Errorf("after Shutdown: %d queries in flight for %s, want 0", n, client)
	}
	if n := p.tcpLimit.open(netip.Addr{}); n != 0 {
		t.Errorf("after Shutdown: %d TCP connections counted open, want 0", n)
	}
}

// TestRecordedAddressesCapped: an answer with thousands of addresses (a
// client's own zone can hold them) reaches the client whole, but only the
// first maxRecordedPerFamily of each family are remembered.
func TestRecordedAddressesCapped(t *testing.T) {
	tests := []struct {
		name       string
		qtype      uint16
		v4, v6     int
		wantRecord int
	}{
		{"4000 A", dns.TypeA, 4000, 0, 32},
		{"2000 AAAA", dns.TypeAAAA, 0, 2000, 32},
		{"1500 A and 1000 AAAA", dns.TypeA, 1500, 1000, 64},
		{"20 A and 5 AAAA", dns.TypeA, 20, 5, 25},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rrs []dns.RR
			for i := range tt.v4 {
				rrs = append(rrs, &dns.A{Hdr: dns.RR_Header{Name: "many.example.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A: net.IPv4(10, byte(i>>16), byte(i>>8), byte(i))})
			}
			for i := range tt.v6 {
				ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
				rrs = append(rrs, &dns.AAAA{Hdr: dns.RR_Header{Name: "many.example.test.", Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 60},
					AAAA: ip.AsSlice()})
			}
			// Too large for UDP: truncated there, whole over TCP.
			upAddr := testnet.ServeDNS(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
				m := new(dns.Msg)
				m.SetReply(r)
				m.Compress = true
				if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
					m.Truncated = true
				} else {
					m.Answer = rrs
				}
				if err := w.WriteMsg(m); err != nil {
					t.Errorf("upstream: %v", err)
				}
			}))
			p := startProxy(t, Config{Upstreams: []netip.AddrPort{upAddr}})
			before := p.Stats().Recorded
			m := new(dns.Msg)
			m.SetQuestion("many.example.test.", tt.qtype)
			c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
			if r, _, err := c.Exchange(m, p.Addr().String()); err != nil {
				t.Errorf("client's query: %v; want the whole answer", err)
			} else if len(r.Answer) != tt.v4+tt.v6 || r.Truncated {
				t.Errorf("client got %d records (TC %v), want all %d", len(r.Answer), r.Truncated, tt.v4+tt.v6)
			}
			if got := p.Stats().Recorded - before; got != uint64(tt.wantRecord) {
				t.Errorf("Recorded grew by %d, want %d", got, tt.wantRecord)
			}
			if got := p.names.Stats().Entries; got != tt.wantRecord {
				t.Errorf("namecache holds %d entries, want %d", got, tt.wantRecord)
			}
		})
	}
}

// TestRateLimitTableFull: sources that fill the rate limiter's table
// within one second (spoofed UDP sources, the /64s of one /48) must not
// deny every source not yet seen; the sources in the table keep their
// limit.
func TestRateLimitTableFull(t *testing.T) {
	tests := []struct {
		name string
		addr func(i int) netip.Addr
	}{
		{"IPv4 sources", func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }},
		{"the /64s of one /48", func(i int) netip.Addr {
			return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, byte(i >> 8), byte(i), 15: 1})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const perSecond = 3
			l := newLimiter(perSecond)
			fixed := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			l.now = func() time.Time { return fixed }
			for i := range maxLimitedSources {
				l.allow(tt.addr(i))
			}
			for _, src := range []string{"192.168.1.7", "fd00::7"} {
				if ok, _ := l.allow(netip.MustParseAddr(src)); !ok {
					t.Errorf("%s's first query refused: %d other sources filled the table", src, maxLimitedSources)
				}
			}
			// One that was counted is still limited.
			seen := tt.addr(0)
			for i := range perSecond {
				if ok, first := l.allow(seen); ok != (i < perSecond-1) || first != (i == perSecond-1) {
					t.Errorf("%s's query %d of the second: ok %v, first %v", seen, i+2, ok, first)
				}
			}
			if n := len(l.counts); n > maxLimitedSources {
				t.Errorf("table holds %d sources, want at most %d", n, maxLimitedSources)
			}
		})
	}
}

// TestRecordedECHCapped: the ECH configurations of an HTTPS answer are
// remembered as its addresses are, at most maxRecordedPerFamily of them:
// a client's own zone can hand out hundreds, each a take of the
// namecache's lock.
func TestRecordedECHCapped(t *testing.T) {
	const n = 200
	ids, names := make([]uint8, n), make([]string, n)
	for i := range n {
		ids[i], names[i] = uint8(i), fmt.Sprintf("c%d.example.test", i)
	}
	list := echConfigList(t, ids, names...)
	upAddr := testnet.ServeDNS(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m.Truncated = true // too large for UDP: asked again over TCP
			w.WriteMsg(m)
			return
		}
		m.Answer = []dns.RR{&dns.HTTPS{SVCB: dns.SVCB{
			Hdr:      dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeHTTPS, Class: dns.ClassINET, Ttl: 60},
			Priority: 1, Target: ".", Value: []dns.SVCBKeyValue{&dns.SVCBECHConfig{ECH: list}}}}}
		w.WriteMsg(m)
	}))
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{upAddr}})
	m := new(dns.Msg)
	m.SetQuestion("svc.example.test.", dns.TypeHTTPS)
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	if _, _, err := c.Exchange(m, p.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if got := p.names.Stats().Recorded; got == 0 || got > maxRecordedPerFamily {
		t.Errorf("%d ECH configurations remembered of the %d handed out, want 1 to %d", got, n, maxRecordedPerFamily)
	}
}

// TestECHOfOtherOwnersNotRemembered: an ECH configuration is remembered
// only from a record that answers the name asked (its owner on the
// question's CNAME chain): a client's own zone could otherwise plant a
// public name and config_id for another name's hellos, which would then
// be logged as real ECH.
func TestECHOfOtherOwnersNotRemembered(t *testing.T) {
	list := echConfigList(t, []uint8{7}, "allowed.example.test")
	upAddr := testnet.ServeDNS(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{&dns.HTTPS{SVCB: dns.SVCB{
			Hdr:      dns.RR_Header{Name: "other.example.test.", Rrtype: dns.TypeHTTPS, Class: dns.ClassINET, Ttl: 60},
			Priority: 1, Target: ".", Value: []dns.SVCBKeyValue{&dns.SVCBECHConfig{ECH: list}}}}}
		w.WriteMsg(m)
	}))
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{upAddr}})
	ask(t, "udp", p.Addr(), "attacker.example.test.", dns.TypeHTTPS)
	if p.names.ECHConfigured(client, "allowed.example.test", 7) {
		t.Error("an ECH configuration from a record of another owner was remembered")
	}
}
