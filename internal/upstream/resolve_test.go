package upstream

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/internal/testnet"
)

// dnsServer serves fixed answers on UDP and TCP loopback and counts queries.
type dnsServer struct {
	addr    netip.AddrPort
	queries atomic.Int32
}

func startDNS(t *testing.T, handler func(q dns.Question, m *dns.Msg, tcp bool)) *dnsServer {
	t.Helper()
	s := &dnsServer{}
	s.addr = testnet.ServeDNS(t, dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		s.queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(q)
		_, tcp := w.RemoteAddr().(*net.TCPAddr)
		handler(q.Question[0], m, tcp)
		w.WriteMsg(m)
	}))
	return s
}

func rr(t *testing.T, s string) dns.RR {
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestDNSResolve(t *testing.T) {
	srv := startDNS(t, func(q dns.Question, m *dns.Msg, tcp bool) {
		switch {
		case q.Name == "a.test." && q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, rr(t, "a.test. 300 IN A 198.51.100.1"), rr(t, "a.test. 60 IN A 198.51.100.2"))
		case q.Name == "a.test." && q.Qtype == dns.TypeAAAA:
			m.Answer = append(m.Answer, rr(t, "a.test. 120 IN AAAA 2001:db8::1"))
		case q.Name == "alias.test." && q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, rr(t, "alias.test. 300 IN CNAME a.test."), rr(t, "a.test. 30 IN A 198.51.100.1"))
		case q.Name == "big.test." && q.Qtype == dns.TypeA:
			if !tcp {
				m.Truncated = true
				return
			}
			m.Answer = append(m.Answer, rr(t, "big.test. 300 IN A 198.51.100.9"))
		case q.Name == "stuffed.test." && q.Qtype == dns.TypeA: // another owner's records too
			m.Answer = append(m.Answer, rr(t, "stuffed.test. 60 IN A 198.51.100.3"), rr(t, "other.test. 60 IN A 169.254.169.254"),
				rr(t, "elsewhere.test. 60 IN CNAME other.test."))
		case q.Name == "nx.test.":
			m.Rcode = dns.RcodeNameError
		case q.Name == "swap.test.": // the right ID, another question
			m.Question[0].Name = "other.test."
			m.Answer = append(m.Answer, rr(t, "other.test. 60 IN A 198.51.100.66"))
		case q.Name == "query.test.": // the right ID, not a response
			m.Response = false
			m.Answer = append(m.Answer, rr(t, "query.test. 60 IN A 198.51.100.67"))
		}
	})
	r := &DNS{Server: srv.addr, Timeout: 2 * time.Second}
	tests := []struct {
		name  string
		addrs []string
		ttl   time.Duration
		err   string
	}{
		{"a.test", []string{"198.51.100.1", "198.51.100.2", "2001:db8::1"}, 60 * time.Second, ""},
		{"alias.test", []string{"198.51.100.1"}, 30 * time.Second, ""},
		{"big.test", []string{"198.51.100.9"}, 300 * time.Second, ""},
		{"stuffed.test", []string{"198.51.100.3"}, 60 * time.Second, ""},
		{"nx.test", nil, 0, "NXDOMAIN"},
		{"empty.test", nil, 0, "no address"},
		{"swap.test", nil, 0, "not an answer to the question asked"},
		{"query.test", nil, 0, "not an answer to the question asked"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := r.Resolve(context.Background(), tc.name)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Resolve(%s) error = %v, want %q", tc.name, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, a := range l.Addrs {
				got = append(got, a.String())
			}
			// The order is part of the contract: A answers first, each in
			// the server's order.
			if !slices.Equal(got, tc.addrs) || l.TTL != tc.ttl {
				t.Errorf("Resolve(%s) = %v ttl %v, want %v ttl %v", tc.name, got, l.TTL, tc.addrs, tc.ttl)
			}
		})
	}
}

// fakeResolver counts calls; it stands in for DNS when testing the cache.
type fakeResolver struct {
	calls atomic.Int32
	delay time.Duration
	ttl   time.Duration
}

func (f *fakeResolver) Resolve(ctx context.Context, name string) (Lookup, error) {
	f.calls.Add(1)
	time.Sleep(f.delay)
	if name == "bad.test" {
		return Lookup{}, ErrNoAddress
	}
	return Lookup{Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.1")}, TTL: f.ttl}, nil
}

func TestCacheSharesAndExpires(t *testing.T) {
	f := &fakeResolver{delay: 50 * time.Millisecond, ttl: time.Hour}
	c := &Cache{Resolver: f}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Resolve(context.Background(), "a.test"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := f.calls.Load(); n != 1 {
		t.Errorf("20 concurrent lookups made %d queries, want 1", n)
	}
	c.Resolve(context.Background(), "a.test")
	if n := f.calls.Load(); n != 1 {
		t.Errorf("cached lookup made a query (%d)", n)
	}
	if _, err := c.Resolve(context.Background(), "bad.test"); err == nil {
		t.Error("failure not returned")
	}
	c.Resolve(context.Background(), "bad.test")
	if n := f.calls.Load(); n != 2 {
		t.Errorf("negative answer not cached: %d queries, want 2", n)
	}
}

func TestCacheBounded(t *testing.T) {
	f := &fakeResolver{ttl: time.Hour}
	c := &Cache{Resolver: f, MaxBytes: 10 * (entryOverhead + 100 + addrSize)}
	for i := range 100 {
		c.Resolve(context.Background(), strings.Repeat("x", i+1)+".test")
	}
	if s := c.Stats(); s.Bytes > c.MaxBytes || s.Entries > 10 || s.Entries != len(c.entries) {
		t.Errorf("Stats() = %+v, want at most %d bytes in at most 10 entries", s, c.MaxBytes)
	}
}

func TestDialMarkAndRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close() // nothing listens now: refused
	d := &Dialer{Timeout: time.Second}
	_, err = d.Dial(context.Background(), addr)
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("Dial to a closed port = %v, want connection refused", err)
	}
}

// TestMarkOnSockets checks that the dialers put SO_MARK on the sockets
// they open: the proxied connections' (Dialer), the DNS queries' over UDP
// (NetDialer) and the system resolver's, which interception rules tell
// from clients' by it.
// Setting a mark needs CAP_NET_ADMIN: CI runs as root.
func TestMarkOnSockets(t *testing.T) {
	const mark = 0x2a
	probe, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.SetsockoptInt(probe, unix.SOL_SOCKET, unix.SO_MARK, mark)
	unix.Close(probe)
	if err != nil {
		// Not root, or root without the capability (a container's).
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must run with CAP_NET_ADMIN (SO_MARK): %v", err)
		}
		t.Skipf("SO_MARK needs CAP_NET_ADMIN: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tc, err := (&Dialer{Timeout: time.Second, Mark: mark}).Dial(context.Background(), netip.MustParseAddrPort(ln.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	uc, err := NetDialer(time.Second, mark).Dial("udp", "127.0.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	// The system resolver's queries go through a Go resolver whose dials
	// are marked too (over TCP as over UDP).
	sys := System{Mark: mark}.resolver()
	if sys.Dial == nil || !sys.PreferGo {
		t.Fatal("System uses a resolver without its own dial, or the C library's")
	}
	su, err := sys.Dial(context.Background(), "udp", "127.0.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close()
	st, err := sys.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for name, c := range map[string]syscall.Conn{"tcp": tc, "udp": uc.(*net.UDPConn),
		"system resolver udp": su.(*net.UDPConn), "system resolver tcp": st.(*net.TCPConn)} {
		raw, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var got int
		var gerr error
		raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
		if gerr != nil || got != mark {
			t.Errorf("%s socket: SO_MARK = %#x, %v; want %#x", name, got, gerr, mark)
		}
	}
}

// TestQueryName: names of two labels or more are asked as absolute names,
// never through resolv.conf's search list; a single label as it is,
// because "localhost." (with the dot) is not in /etc/hosts for Go's
// resolver or the C library's.
func TestQueryName(t *testing.T) {
	for in, want := range map[string]string{
		"github.com":       "github.com.",
		"a.b.example.":     "a.b.example.",
		"xn--bcher-kva.ch": "xn--bcher-kva.ch.",
		"localhost":        "localhost",
		"localhost.":       "localhost.",
		"intranet":         "intranet",
	} {
		if got := queryName(in); got != want {
			t.Errorf("queryName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestSystemFindsLocalhost: System finds /etc/hosts' localhost.
func TestSystemFindsLocalhost(t *testing.T) {
	l, err := System{}.Resolve(context.Background(), "localhost")
	if err != nil {
		t.Fatalf("localhost: %v", err)
	}
	for _, a := range l.Addrs {
		if !a.IsLoopback() {
			t.Errorf("localhost resolved to %v, want loopback addresses only", l.Addrs)
		}
	}
}

// TestSystemSingleLabel: a name of one label is looked up in /etc/hosts
// only. resolv.conf's search list would turn it into another name
// (secret into secret.corp.example), which the policy never decided: a
// deny rule for *.corp.example would not hold for a client that asked
// for "secret".
func TestSystemSingleLabel(t *testing.T) {
	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("# comment\n127.0.0.1 localhost\n198.51.100.4 Intranet intranet-alias # trailing\n"), 0o644)
	s := System{Hosts: hosts}
	for _, name := range []string{"intranet", "INTRANET", "intranet-alias"} {
		if len(s.hostsAddrs(name)) == 0 {
			t.Errorf("%s: not found in the hosts file", name)
		}
	}
	_, err := s.Resolve(context.Background(), "secret")
	if err == nil || !strings.Contains(err.Error(), "/etc/hosts") && !strings.Contains(err.Error(), hosts) {
		t.Errorf("secret (one label, not in the hosts file): %v; want an error saying it is looked up in the hosts file only", err)
	}
}
