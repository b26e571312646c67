package config

import (
	"net/netip"
	"strconv"
	"time"

	"go.yaml.in/yaml/v3"
)

// Defaults of the dns section: what each key means when it is left out.
// They are egressd's only copy: the packages that take these values
// (dnsproxy, namecache) read a zero as the default here.
const (
	DefaultRemember   = 10 * time.Minute
	DefaultMaxEntries = 100_000
	DefaultDNSTimeout = 2 * time.Second
	DefaultRateLimit  = 200
	// A DNS client needs one TCP connection at a time (RFC 7766 lets it
	// pipeline queries on it); 16 leaves room for a NAT or a burst of
	// truncated answers. 512 in all is about what a forwarder serving a
	// few hundred clients ever sees over TCP.
	DefaultMaxTCPConns          = 512
	DefaultMaxTCPConnsPerSource = 16
	maxMaxEntries               = 10_000_000
)

// DefaultMaxEntriesPerClient is max_entries_per_client when it is left
// out: a quarter of max_entries, so that no single client can fill the
// name memory.
func DefaultMaxEntriesPerClient(maxEntries int) int { return max(1, maxEntries/4) }

// dns reads the dns section. Address and upstreams are required: a
// forwarder without either is a mistake, not something to guess.
func (d *decoder) dns(n *yaml.Node, c *DNS) {
	// The filter is on unless turned off: without it any client could send
	// data out as look-ups of names no rule allows (DNS exfiltration),
	// and no name should leave egressd unless the policy could allow it.
	*c = DNS{Remember: DefaultRemember, MaxEntries: DefaultMaxEntries, Timeout: DefaultDNSTimeout, Filter: true,
		RateLimit: DefaultRateLimit, MaxTCPConns: DefaultMaxTCPConns, MaxTCPConnsPerSource: DefaultMaxTCPConnsPerSource, Line: n.Line}
	f, ok := d.mapping(n, "dns", "address", "upstreams", "remember", "filter", "strip_ech", "strip_h3",
		"max_entries", "max_entries_per_client", "timeout", "rate_limit", "clients",
		"max_tcp_connections", "max_tcp_connections_per_source")
	if !ok {
		return
	}
	for _, key := range []string{"address", "upstreams"} {
		if _, ok := f[key]; !ok {
			d.errorf(n, "dns: missing key %q", key)
		}
	}
	if v, ok := f["address"]; ok {
		// IP:port, like a listener; port 0 binds any free port (tests).
		if s, ok := d.str(v, "dns.address"); ok {
			ap, err := netip.ParseAddrPort(s)
			if err != nil {
				d.errorf(v, "dns.address: invalid address %q; want IP:port, e.g. 127.0.0.1:5353 or [::1]:5353", s)
			}
			c.Address = ap
		}
	}
	if v, ok := f["upstreams"]; ok {
		for i, it := range d.matchList(v, "dns.upstreams", "upstream DNS servers") {
			p := item("dns.upstreams", i)
			s, ok := d.str(it, p)
			if !ok {
				continue
			}
			up, ok := parseResolver(s)
			switch {
			case !ok:
				d.errorf(it, "%s: invalid address %q; want an IP address with an optional port, e.g. 127.0.0.1 or 127.0.0.1:53", p, s)
			case up == c.Address:
				d.errorf(it, "%s: %s is dns.address itself: egressd would forward to itself", p, s)
			default:
				c.Upstreams = append(c.Upstreams, up)
			}
		}
	}
	if v, ok := f["remember"]; ok {
		if dur, ok := d.duration(v, "dns.remember"); ok {
			c.Remember = dur
		}
	}
	if v, ok := f["timeout"]; ok {
		if dur, ok := d.duration(v, "dns.timeout"); ok {
			c.Timeout = dur
		}
	}
	if v, ok := f["filter"]; ok {
		c.Filter, _ = d.boolean(v, "dns.filter")
	}
	if v, ok := f["strip_ech"]; ok {
		c.StripECH, _ = d.boolean(v, "dns.strip_ech")
	}
	if v, ok := f["strip_h3"]; ok {
		c.StripH3, _ = d.boolean(v, "dns.strip_h3")
	}
	if v, ok := f["max_entries"]; ok {
		if i, ok := d.positiveInt(v, "dns.max_entries", maxMaxEntries); ok {
			c.MaxEntries = i
		}
	}
	if v, ok := f["max_entries_per_client"]; ok {
		if i, ok := d.positiveInt(v, "dns.max_entries_per_client", maxMaxEntries); ok {
			if i > c.MaxEntries {
				d.errorf(v, "dns.max_entries_per_client: %d is more than max_entries (%d)", i, c.MaxEntries)
			}
			c.MaxEntriesPerClient = i
		}
	}
	if c.MaxEntriesPerClient == 0 {
		c.MaxEntriesPerClient = DefaultMaxEntriesPerClient(c.MaxEntries)
	}
	if v, ok := f["clients"]; ok {
		c.Clients = d.prefixes(v, "dns.clients")
	}
	if v, ok := f["max_tcp_connections"]; ok {
		if i, ok := d.positiveInt(v, "dns.max_tcp_connections", 1_000_000); ok {
			c.MaxTCPConns = i
		}
	}
	if v, ok := f["max_tcp_connections_per_source"]; ok {
		if i, ok := d.positiveInt(v, "dns.max_tcp_connections_per_source", 1_000_000); ok {
			if i > c.MaxTCPConns {
				d.errorf(v, "dns.max_tcp_connections_per_source: %d is more than max_tcp_connections (%d)", i, c.MaxTCPConns)
			}
			c.MaxTCPConnsPerSource = i
		}
	}
	if v, ok := f["rate_limit"]; ok {
		if i, ok := d.positiveInt(v, "dns.rate_limit", 1_000_000); ok {
			c.RateLimit = i
		}
	}
}

// positiveInt reads an integer from 1 to max.
func (d *decoder) positiveInt(n *yaml.Node, path string, max int) (int, bool) {
	s, ok := d.scalar(n, path, "!!int", "an integer")
	if !ok {
		return 0, false
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 || v > max {
		d.errorf(n, "%s: want an integer from 1 to %d, got %s", path, max, s)
		return 0, false
	}
	return v, true
}
