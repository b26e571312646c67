package gateway

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/policy"
)

// egressd must never dial itself. An allowed name that resolves to one of
// its own listening addresses loops: each connection egressd makes is
// accepted by egressd, decided alike and dialled again, until file
// descriptors run out (a single client connection can become thousands).
// And an address of egressd's own host reaches services that
// listen there for the host's own use, like the restricted ranges do. So
// every dial is decided through decideDial, which refuses both, as a deny:
// the log line says why, and no socket is made.

// decideDial is policy.DecideDial (destination safety: every answer, or
// in.Dst when there are none, is checked) with egressd's own addresses
// refused too, for every answer, since dialVerdict may go to any of them:
//   - an address and port egressd listens on (isSelf), whatever the rule:
//     no destinations can open a loop;
//   - any other address of this host (isLocal), unless the deciding rule's
//     destinations name it.
//
// Either refusal is Hard: report-only mode does not waive it.
func (g *Gateway) decideDial(st *State, in policy.Input, answers ...netip.Addr) policy.Decision {
	d := st.Policy.DecideDial(in, answers...)
	addrs := answers
	if len(addrs) == 0 {
		addrs = []netip.Addr{in.Dst}
	}
	for _, a := range addrs {
		if dst := netip.AddrPortFrom(a, in.Port); g.isSelf(dst) {
			g.metrics.DestinationRefused(metrics.RefusedOwnListener)
			return refuseDial(d, fmt.Sprintf("destination %s is egressd's own listener", dst))
		}
	}
	if d.Action == policy.Deny && d.Hard {
		return d // refused already, for a restricted address
	}
	for _, a := range addrs {
		if g.isLocal(a) && !policy.InPrefixes(d.Destinations, a) {
			g.metrics.DestinationRefused(metrics.RefusedLocalAddress)
			return refuseDial(d, fmt.Sprintf("destination %s is a local address of this host, not covered by rule %q destinations", a.Unmap(), d.Rule))
		}
	}
	return d
}

// refuseDial makes d a Hard deny for why: the reason of an allow is
// replaced, that of a deny kept after it.
func refuseDial(d policy.Decision, why string) policy.Decision {
	if d.Action == policy.Allow {
		d.Action, d.Reason = policy.Deny, why
	} else {
		d.Reason = why + "; " + d.Reason
	}
	d.Hard = true
	return d
}

// isSelf reports whether a connection to dst would reach egressd itself:
// dst's port is one egressd listens on (a listener, the DNS forwarder's
// TCP side, the admin endpoint of the running config) and dst's address is
// that listener's or any address of this host. The second part is wider
// than the sockets strictly are (a listener on 127.0.0.1:8080 is not
// reached at 10.0.0.5:8080), on purpose: a listener on 0.0.0.0 or ::
// is reached at every local address, a TPROXY or REDIRECT rule may turn
// any of them into a listener's, and an address of this host at one of
// egressd's ports has nothing else to offer a client.
func (g *Gateway) isSelf(dst netip.AddrPort) bool {
	port, a := dst.Port(), dst.Addr().Unmap().WithZone("")
	own := false
	g.mu.Lock()
	for _, bl := range g.listeners {
		if la := listener.AddrPort(bl.ln.Addr()); la.Port() == port {
			own = true
			if la.Addr().WithZone("") == a {
				g.mu.Unlock()
				return true
			}
		}
	}
	g.mu.Unlock()
	g.self.dnsOnce.Do(func() { g.self.dns = g.DNSAddr() }) // bound before the first connection
	for _, ap := range []netip.AddrPort{g.self.dns, g.state.Load().Config.Admin.Address} {
		if ap.IsValid() && ap.Port() == port {
			own = true
			if ap.Addr().Unmap() == a {
				return true
			}
		}
	}
	return own && g.isLocal(a)
}

// isLocal reports whether a is an address of this host: loopback,
// unspecified (Linux connects 0.0.0.0 and :: to the host itself), or an
// address of one of its interfaces. Addresses the host answers for only
// through a local route (`ip route add local 192.0.2.0/24 dev lo`) are not
// seen.
func (g *Gateway) isLocal(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	ok, err := g.self.local.has(a)
	if err != nil {
		g.log.Warn("cannot read this host's interface addresses; using the last ones read", "err", err)
	}
	return ok
}

// ownAddrs is what the gateway knows of its own addresses beyond its
// listeners, which it reads from g.listeners.
type ownAddrs struct {
	local   hostAddrs
	dnsOnce sync.Once
	dns     netip.AddrPort // the DNS forwarder's bound address, invalid without one
}

// hostAddrsTTL is how long a reading of the interface addresses is used:
// they are read at most about once a second, not per connection.
const hostAddrsTTL = time.Second

// hostAddrs caches this host's interface addresses. The zero value reads
// them with net.InterfaceAddrs.
type hostAddrs struct {
	mu   sync.Mutex // held by the one reading; guards read
	read func() ([]netip.Addr, error)
	snap atomic.Pointer[hostSnapshot]
}

// hostSnapshot is one reading of the addresses.
type hostSnapshot struct {
	at    time.Time
	addrs map[netip.Addr]struct{}
}

// has reports whether a (unmapped, without a zone) is in the latest
// reading, reading again when that is older than hostAddrsTTL. While one
// connection reads, the others use the previous reading; err is the
// reading's failure, after which the previous addresses stay in use.
func (h *hostAddrs) has(a netip.Addr) (ok bool, err error) {
	s := h.snap.Load()
	if s == nil || time.Since(s.at) > hostAddrsTTL {
		s, err = h.refresh(s)
	}
	_, ok = s.addrs[a]
	return ok, err
}

// refresh reads the addresses unless another goroutine is doing so or has
// just done so, and returns the newest reading.
func (h *hostAddrs) refresh(old *hostSnapshot) (*hostSnapshot, error) {
	if !h.mu.TryLock() {
		if old != nil {
			return old, nil
		}
		h.mu.Lock() // the first reading: wait for it
	}
	defer h.mu.Unlock()
	if s := h.snap.Load(); s != old {
		return s, nil // read meanwhile
	}
	read := h.read
	if read == nil {
		read = interfaceAddrs
	}
	addrs, err := read()
	s := &hostSnapshot{at: time.Now(), addrs: make(map[netip.Addr]struct{}, len(addrs))}
	if err != nil && old != nil {
		s.addrs = old.addrs
	}
	for _, a := range addrs {
		s.addrs[a.Unmap().WithZone("")] = struct{}{}
	}
	h.snap.Store(s)
	return s, err
}

// setRead replaces how the addresses are read (tests) and forgets the
// last reading.
func (h *hostAddrs) setRead(read func() ([]netip.Addr, error)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.read = read
	h.snap.Store(nil)
}

// interfaceAddrs returns the addresses of every interface of this host.
func interfaceAddrs() ([]netip.Addr, error) {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	addrs := make([]netip.Addr, 0, len(ifas))
	for _, ia := range ifas {
		if pn, ok := ia.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(pn.IP); ok {
				addrs = append(addrs, a)
			}
		}
	}
	return addrs, nil
}
