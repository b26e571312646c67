package dnsproxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestSilentTCPFlood: two sources (127.0.0.2 and 127.0.0.3) open 2,000
// TCP connections each to the forwarder and send nothing. Each source
// keeps at most MaxTCPConnsPerSource of them open in the forwarder (the
// rest are closed as soon as they are accepted, counted as overloaded), a
// TCP query from 127.0.0.1 is answered meanwhile, and the silent ones are
// closed once their first query is overdue.
func TestSilentTCPFlood(t *testing.T) {
	up := startUpstream(t, false, "git.example.test. 60 IN A 198.51.100.10")
	const perSource, total, conns = 16, 40, 2000
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}, MaxTCPConns: total, MaxTCPConnsPerSource: perSource})
	attackers := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}

	var wg sync.WaitGroup
	held := make(chan []net.Conn, len(attackers))
	for _, src := range attackers {
		wg.Go(func() {
			var cs []net.Conn
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
			for range conns {
				c, err := d.Dial("tcp", p.Addr().String())
				switch {
				case errors.Is(err, syscall.ECONNRESET):
					// Reset over a cap before the dial returned.
				case err != nil:
					t.Errorf("dial from %s: %v", src, err)
					return
				default:
					cs = append(cs, c)
				}
			}
			held <- cs
		})
	}
	// A legitimate client's TCP query is answered during the flood.
	if r := ask(t, "tcp", p.Addr(), "git.example.test.", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("TCP query from 127.0.0.1 during the flood: rcode %s, %d answers; want one A", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	wg.Wait()
	close(held)
	var all []net.Conn
	for cs := range held {
		all = append(all, cs...)
	}
	defer func() {
		for _, c := range all {
			c.Close()
		}
	}()

	// Every connection accepted: those past the caps were closed at once.
	want := uint64(len(attackers) * (conns - perSource))
	deadline := time.Now().Add(30 * time.Second)
	for p.Stats().Overloaded < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := p.Stats().Overloaded; got < want {
		t.Fatalf("%d silent connections from each of %d sources: %d closed over the caps, want at least %d", conns, len(attackers), got, want)
	}
	t.Logf("closed over the caps: %d; open: %d in all, %d from %s", p.Stats().Overloaded,
		p.tcpLimit.open(netip.Addr{}), p.tcpLimit.open(attackers[0]), attackers[0])
	for _, src := range attackers {
		if n := p.tcpLimit.open(src); n > perSource {
			t.Errorf("%s holds %d connections open, want at most %d", src, n, perSource)
		}
	}
	if n := p.tcpLimit.open(netip.Addr{}); n > total {
		t.Errorf("%d TCP connections open in all, want at most %d", n, total)
	}

	// The silent ones are closed once their first query is overdue
	// (tcpFirstQuery); the bound here is generous.
	deadline = time.Now().Add(30 * time.Second)
	for p.tcpLimit.open(netip.Addr{}) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := p.tcpLimit.open(netip.Addr{}); n > 0 {
		t.Errorf("%d silent TCP connections still open after 30 s, want 0", n)
	}
}

// A client that asked once and then stays silent is closed after the idle
// timeout; the connection answered its query first.
func TestTCPIdleClosed(t *testing.T) {
	up := startUpstream(t, false, "git.example.test. 60 IN A 198.51.100.10")
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	c, err := dns.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion("git.example.test.", dns.TypeA)
	if err := c.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	// The deadline is four times tcpIdle; it was 10 s before.
	c.SetReadDeadline(time.Now().Add(8 * time.Second))
	if r, err := c.ReadMsg(); err != nil || len(r.Answer) != 1 {
		t.Fatalf("first query: %v %v", r, err)
	}
	// Then silence: the forwarder closes (EOF) before our deadline.
	_, err = c.Conn.Read(make([]byte, 1))
	if !errors.Is(err, io.EOF) {
		t.Errorf("idle connection: read returned %v, want EOF (closed by the forwarder)", err)
	}
}
