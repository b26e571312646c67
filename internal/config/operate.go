package config

import (
	"fmt"
	"net/netip"
	"strconv"

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
// refusal lets a client (or its load balancer) try another instance.
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

func (d *decoder) limits(n *yaml.Node, l *Limits) {
	f, _ := d.mapping(n, "limits", "max_connections", "max_connections_per_source", "max_pending_handshakes")
	for _, e := range []struct {
		key string
		dst *int
	}{
		{"max_connections", &l.MaxConnections},
		{"max_connections_per_source", &l.MaxConnectionsPerSource},
		{"max_pending_handshakes", &l.MaxPendingHandshakes},
	} {
		if v, ok := f[e.key]; ok {
			*e.dst, _ = d.count(v, field("limits", e.key))
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
	return fmt.Sprintf("max_connections=%s max_connections_per_source=%s max_pending_handshakes=%s",
		f(l.MaxConnections), f(l.MaxConnectionsPerSource), f(l.MaxPendingHandshakes))
}
