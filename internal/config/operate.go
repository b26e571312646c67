package config

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"syscall"

	"go.yaml.in/yaml/v3"
)

// This file holds the sections that shape how egressd is operated rather
// than what it decides: the admin endpoint, connection limits and the
// shutdown grace period.

// Admin is the HTTP endpoint for /metrics, /healthz and /readyz.
type Admin struct {
	// Address is where it listens; the zero value means no admin endpoint.
	// It serves no secrets but does reveal traffic volumes per rule, so
	// the examples bind loopback.
	Address netip.AddrPort
	// PProf adds /debug/pprof/; off by default, since a profile request
	// costs CPU an attacker could ask for.
	PProf bool
	Line  int
}

// Limits bound what one gateway accepts; 0 means no limit. A connection
// over a limit is reset at once rather than queued: under overload a fast
// refusal lets a client (or its load balancer) try another instance. A key
// the config leaves out is derived from the open-files limit
// (DeriveLimits); writing 0 is the way to say "no limit".
type Limits struct {
	// MaxConnections bounds connections open at once, all listeners
	// together.
	MaxConnections int
	// MaxConnectionsPerSource bounds the open connections of one source
	// address, so one workload cannot starve the rest.
	MaxConnectionsPerSource int
	// MaxPendingHandshakes bounds connections still being peeked (no
	// decision yet): the ones a slowloris client would pile up.
	MaxPendingHandshakes int
	// NoFile is the open-files limit the keys left out were derived from;
	// 0 when the config gave every key (or the limit could not be read,
	// and the keys left out mean no limit).
	NoFile uint64
}

// noFile returns the open-files soft limit (RLIMIT_NOFILE), 0 when it
// cannot be read. egressd run raises it to the hard limit before loading
// the config. A variable, so that tests can give any limit.
var noFile = func() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return lim.Cur
}

// DeriveLimits returns the limits for a process allowed noFile open files
// (ulimit -n). A relayed connection holds two descriptors (client and
// server), and a reserve is kept for everything else (listeners, the DNS
// forwarder and resolver, the admin endpoint, log files, and the relay's
// splice pipes, which package relay keeps to a fortieth of the limit,
// half of the reserve): a tenth of the limit, at least 256 (at most half).
// Past max_connections egressd refuses at once instead of failing accepts
// and dials with EMFILE. One source may hold three quarters of them, so
// that a quarter always stays for everyone else while one busy client (a
// NAT, a node's pods, a benchmark's loopback) is not cut short; a quarter
// may be pending handshakes, so that a crowd of silent ones cannot take
// every place. noFile 0 (unknown) gives no limits.
func DeriveLimits(noFile uint64) Limits {
	if noFile == 0 {
		return Limits{}
	}
	reserve := min(max(256, noFile/10), noFile/2)
	conns := min(max(1, (noFile-reserve)/2), math.MaxInt32)
	return Limits{MaxConnections: int(conns), MaxConnectionsPerSource: int(max(1, conns*3/4)),
		MaxPendingHandshakes: int(max(1, conns/4)), NoFile: noFile}
}

func (d *decoder) admin(n *yaml.Node, a *Admin) {
	a.Line = n.Line
	f, ok := d.mapping(n, "admin", "address", "pprof")
	if !ok {
		return
	}
	if v, ok := f["address"]; ok {
		if s, ok := d.str(v, "admin.address"); ok {
			ap, err := netip.ParseAddrPort(s)
			if err != nil {
				d.errorf(v, "admin.address: invalid address %q; want IP:port, e.g. 127.0.0.1:9090", s)
			} else {
				a.Address = ap
			}
		}
	} else {
		d.errorf(n, "admin: missing key %q", "address")
	}
	if v, ok := f["pprof"]; ok {
		a.PProf, _ = d.boolean(v, "admin.pprof")
	}
}

// limits reads the limits section (n is nil when there is none) and
// derives each key it leaves out from the open-files limit.
func (d *decoder) limits(n *yaml.Node, l *Limits) {
	var f map[string]*yaml.Node
	if n != nil && !isNull(n) {
		f, _ = d.mapping(n, "limits", "max_connections", "max_connections_per_source", "max_pending_handshakes")
	}
	def := DeriveLimits(noFile())
	for _, e := range []struct {
		key      string
		dst      *int
		fallback int
	}{
		{"max_connections", &l.MaxConnections, def.MaxConnections},
		{"max_connections_per_source", &l.MaxConnectionsPerSource, def.MaxConnectionsPerSource},
		{"max_pending_handshakes", &l.MaxPendingHandshakes, def.MaxPendingHandshakes},
	} {
		if v, ok := f[e.key]; ok {
			*e.dst, _ = d.count(v, field("limits", e.key))
		} else {
			*e.dst, l.NoFile = e.fallback, def.NoFile
		}
	}
}

// count reads a limit: a whole number from 0 (no limit) to 2^31-1.
func (d *decoder) count(n *yaml.Node, path string) (int, bool) {
	s, ok := d.scalar(n, path, "!!int", "a whole number")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 32)
	if err != nil || v < 0 {
		d.errorf(n, "%s: want a whole number from 0 (no limit) to 2147483647, got %s", path, s)
		return 0, false
	}
	return int(v), true
}

// checkAdmin reports an admin address that a listener also uses.
func (d *decoder) checkAdmin(n *yaml.Node, c *Config) {
	if !c.Admin.Address.IsValid() || c.Admin.Address.Port() == 0 {
		return
	}
	for _, l := range c.Listeners {
		if l.Address == c.Admin.Address {
			d.errorf(n, "admin.address: %s is listener %q's address (line %d)", c.Admin.Address, l.Name, l.Line)
		}
	}
}

// String describes the limits for the startup log.
func (l Limits) String() string {
	f := func(v int) string {
		if v == 0 {
			return "none"
		}
		return strconv.Itoa(v)
	}
	s := fmt.Sprintf("max_connections=%s max_connections_per_source=%s max_pending_handshakes=%s",
		f(l.MaxConnections), f(l.MaxConnectionsPerSource), f(l.MaxPendingHandshakes))
	if l.NoFile > 0 {
		s += fmt.Sprintf(" (keys not in the config derived from the open-files limit %d)", l.NoFile)
	}
	return s
}
