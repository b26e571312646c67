// Package upstream is egressd's own side of the network, apart from the
// relay loop: it resolves names (with a TTL cache, bounded by bytes, that
// the anti-spoofing check shares), and dials through the Go runtime with a
// connect timeout and the socket mark that keeps egressd's own traffic out
// of its redirect rules — for the connections egressd itself reads and
// writes before they are relayed or instead (forwarded HTTP requests, the
// wait for a server-first client's late bytes) and for the DNS forwarder's
// sockets. Connections that go straight to the relay loop are dialled by
// the loop itself (relay.Loops.Dial), which saves the runtime's poller
// hand-over.
package upstream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/config"
)

// Lookup is one name's answers and how long they may be reused.
type Lookup struct {
	Addrs []netip.Addr
	TTL   time.Duration
}

// Resolver answers A and AAAA questions.
type Resolver interface {
	Resolve(ctx context.Context, name string) (Lookup, error)
}

// ErrNoAddress means the name exists but has no A or AAAA record.
var ErrNoAddress = errors.New("no address")

// DNS queries one DNS server directly (miekg/dns), so that answers carry
// their TTLs. CNAME chains are followed by the server; every A/AAAA in the
// answer section is taken and the smallest TTL kept.
type DNS struct {
	Server  netip.AddrPort
	Timeout time.Duration // per query; 0: config.DefaultResolverTimeout
	Mark    uint32        // SO_MARK on the query sockets; 0: none
}

// Resolve asks for A and AAAA in parallel. The answers come back in a
// fixed order, the A records first, each family in the server's order:
// the gateway dials the answers in this order, and which address comes
// first must not depend on which query happened to return first.
func (r *DNS) Resolve(ctx context.Context, name string) (Lookup, error) {
	qtypes := [2]uint16{dns.TypeA, dns.TypeAAAA}
	var (
		res  [2]Lookup
		errs [2]error
		wg   sync.WaitGroup
	)
	for i, qt := range qtypes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], errs[i] = r.query(ctx, name, qt)
		}()
	}
	wg.Wait()
	var out Lookup
	for i := range qtypes {
		if errs[i] != nil {
			continue
		}
		out.Addrs = append(out.Addrs, res[i].Addrs...)
		if out.TTL == 0 || (res[i].TTL > 0 && res[i].TTL < out.TTL) {
			out.TTL = res[i].TTL
		}
	}
	if len(out.Addrs) == 0 {
		if err := cmp.Or(errs[0], errs[1]); err != nil {
			return out, err
		}
		return out, fmt.Errorf("resolve %s: %w", name, ErrNoAddress)
	}
	return out, nil
}

func (r *DNS) query(ctx context.Context, name string, qt uint16) (Lookup, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qt)
	m.RecursionDesired = true
	m.SetEdns0(1232, false)
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = config.DefaultResolverTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &dns.Client{Net: "udp", Timeout: timeout, Dialer: NetDialer(timeout, r.Mark)}
	in, _, err := c.ExchangeContext(ctx, m, r.Server.String())
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.ExchangeContext(ctx, m, r.Server.String())
	}
	if err != nil {
		return Lookup{}, fmt.Errorf("resolve %s: %w", name, err)
	}
	if in.Rcode != dns.RcodeSuccess {
		return Lookup{}, fmt.Errorf("resolve %s: %s", name, dns.RcodeToString[in.Rcode])
	}
	// The library matched the ID only. A failure above needs no more
	// checking (nothing of it is used); a success must also be a response
	// to this very question: the answers decide where a connection goes.
	if q := m.Question[0]; !in.Response || len(in.Question) != 1 || !strings.EqualFold(in.Question[0].Name, q.Name) ||
		in.Question[0].Qtype != q.Qtype || in.Question[0].Qclass != q.Qclass {
		return Lookup{}, fmt.Errorf("resolve %s: the server's reply is not an answer to the question asked", name)
	}
	var l Lookup
	chain := Chain(in, m.Question[0].Name)
	for _, rr := range in.Answer {
		a, ok := RecordAddr(rr)
		if !ok || !chain[strings.ToLower(rr.Header().Name)] {
			continue // another owner's: not an answer to this name
		}
		ttl := time.Duration(rr.Header().Ttl) * time.Second
		if l.TTL == 0 || ttl < l.TTL {
			l.TTL = ttl
		}
		l.Addrs = append(l.Addrs, a)
	}
	return l, nil
}

// maxChain bounds how many CNAMEs are followed from the question's name: a
// loop or an absurd chain in an answer must not cost more than this.
const maxChain = 16

// Chain is qname and the names its CNAME records in m's answer lead to,
// lower-case and fully qualified, at most maxChain steps away: the owners
// whose addresses answer qname. Records of other owners (a server
// stuffing unrelated names into the answer) answer nothing asked.
func Chain(m *dns.Msg, qname string) map[string]bool {
	chain := map[string]bool{strings.ToLower(dns.Fqdn(qname)): true}
	for range maxChain {
		grew := false
		for _, rr := range m.Answer {
			if c, ok := rr.(*dns.CNAME); ok && chain[strings.ToLower(c.Hdr.Name)] {
				t := strings.ToLower(dns.Fqdn(c.Target))
				if !chain[t] {
					chain[t] = true
					grew = true
				}
			}
		}
		if !grew {
			break
		}
	}
	return chain
}

// RecordAddr is the address an A or AAAA record carries (an IPv4-mapped
// one unmapped); ok is false for any other record.
func RecordAddr(rr dns.RR) (a netip.Addr, ok bool) {
	switch v := rr.(type) {
	case *dns.A:
		a, ok = netip.AddrFromSlice(v.A.To4())
	case *dns.AAAA:
		a, ok = netip.AddrFromSlice(v.AAAA.To16())
	}
	return a.Unmap(), ok
}

// System uses the operating system's resolver (and so /etc/hosts), which
// reports no TTLs: answers are reused for SystemTTL.
//
// It is always Go's own resolver (which reads resolv.conf and /etc/hosts
// itself), never the C library's: only Go's sockets can be marked, and
// only Go's finds a name asked for with its trailing dot in /etc/hosts
// (see Resolve).
type System struct {
	// Mark is put on the query sockets (SO_MARK), as on every other socket
	// egressd opens, so that redirect rules pass egressd's own DNS over TCP
	// by.
	Mark uint32
	// Hosts is the hosts file a name of one label is looked up in;
	// "" is /etc/hosts.
	Hosts string
}

// SystemTTL is how long the system resolver's answers are cached.
const SystemTTL = 30 * time.Second

// Resolve looks name up. A name of two labels or more is asked for as an
// absolute one (a trailing dot): a relative name would first go through
// resolv.conf's search domains whenever it has fewer dots than ndots (5 in
// Kubernetes pods), so "github.com" could be answered as, say,
// "github.com.default.svc.cluster.local", a name that whoever may create a
// Service there controls. A single label ("localhost") is looked up in
// the hosts file only: through the search list it would become another
// name ("secret" into "secret.corp.example"), which the policy never
// decided, and where a deny rule for "*.corp.example" would not hold.
// Other names go to /etc/hosts and DNS in nsswitch.conf's order (files
// first by default).
func (s System) Resolve(ctx context.Context, name string) (Lookup, error) {
	q := queryName(name)
	if !strings.HasSuffix(q, ".") {
		return s.fromHosts(name)
	}
	addrs, err := s.resolver().LookupNetIP(ctx, "ip", q)
	if err != nil {
		return Lookup{}, fmt.Errorf("resolve %s: %w", name, err)
	}
	l := Lookup{TTL: SystemTTL, Addrs: make([]netip.Addr, 0, len(addrs))}
	for _, a := range addrs {
		l.Addrs = append(l.Addrs, a.Unmap())
	}
	v4First(l.Addrs)
	if len(l.Addrs) == 0 {
		return l, fmt.Errorf("resolve %s: %w", name, ErrNoAddress)
	}
	return l, nil
}

// queryName is the name System asks for: absolute when it has two labels
// or more (see Resolve).
func queryName(name string) string {
	if strings.Contains(strings.TrimSuffix(name, "."), ".") {
		return dns.Fqdn(name)
	}
	return name
}

// v4First puts IPv4 addresses before IPv6 ones, each in their order, as
// DNS above does, so both resolvers dial alike.
func v4First(addrs []netip.Addr) {
	slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
		return cmp.Compare(a.BitLen(), b.BitLen()) // 32 before 128
	})
}

// fromHosts answers name, one label, from the hosts file alone.
func (s System) fromHosts(name string) (Lookup, error) {
	l := Lookup{TTL: SystemTTL, Addrs: s.hostsAddrs(name)}
	if len(l.Addrs) == 0 {
		return Lookup{}, fmt.Errorf("resolve %s: a name of one label is looked up in %s only (resolv.conf's search list would make it another name, which the policy did not decide): %w", name, s.hostsPath(), ErrNoAddress)
	}
	v4First(l.Addrs)
	return l, nil
}

func (s System) hostsPath() string { return cmp.Or(s.Hosts, "/etc/hosts") }

// hostsAddrs returns the addresses the hosts file gives name (in any
// case), as hosts(5) reads it: an address, then names, "#" to the line's
// end a comment.
func (s System) hostsAddrs(name string) []netip.Addr {
	b, err := os.ReadFile(s.hostsPath())
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for line := range strings.Lines(string(b)) {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		a, err := netip.ParseAddr(f[0])
		if err != nil || a.Zone() != "" {
			continue
		}
		for _, n := range f[1:] {
			if strings.EqualFold(n, name) && !slices.Contains(out, a.Unmap()) {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}

func (s System) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: NetDialer(0, s.Mark).DialContext}
}
