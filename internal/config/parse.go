package config

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/fqdn"
	"github.com/egressd/egressd/internal/policy"
)

// This file is the schema: one function per section, in the order of the file.

func (d *decoder) config(n *yaml.Node, c *Config) {
	f, ok := d.mapping(n, "", "listeners", "resolver", "mark", "timeouts", "log", "users", "policy", "dns",
		"admin", "limits", "shutdown_grace", "shutdown_delay", "busy_poll")
	if !ok {
		return
	}
	if v, ok := f["listeners"]; ok {
		c.Listeners = d.listeners(v)
	} else {
		d.errorf(n, "missing key %q: at least one listener is required", "listeners")
	}
	if v, ok := f["resolver"]; ok {
		if s, ok := d.str(v, "resolver"); ok {
			if c.Resolver, ok = parseResolver(s); !ok {
				d.errorf(v, "resolver: invalid address %q; want an IP address with an optional port, e.g. 127.0.0.1, 127.0.0.1:53 or [::1]:53", s)
			}
		}
	}
	if v, ok := f["mark"]; ok {
		c.Mark, _ = d.uint32Value(v, "mark")
	}
	// A section left empty ("log:" and nothing below) keeps its defaults.
	if v, ok := f["timeouts"]; ok && !isNull(v) {
		d.timeouts(v, &c.Timeouts)
	}
	if v, ok := f["log"]; ok && !isNull(v) {
		d.log(v, &c.Log)
	}
	// Before the policy: its rules may name users.
	if v, ok := f["users"]; ok && !isNull(v) {
		c.Users = d.users(v)
	}
	if v, ok := f["policy"]; ok && !isNull(v) {
		d.policy(v, &c.Policy)
	}
	if v, ok := f["dns"]; ok {
		d.dns(v, &c.DNS)
	}
	if v, ok := f["admin"]; ok && !isNull(v) {
		d.admin(v, &c.Admin)
		d.checkAdmin(v, c)
	}
	// Always: keys left out are derived from the open-files limit.
	d.limits(f["limits"], &c.Limits)
	if v, ok := f["shutdown_grace"]; ok {
		if dur, ok := d.duration(v, "shutdown_grace"); ok {
			c.ShutdownGrace = dur
		}
	}
	if v, ok := f["shutdown_delay"]; ok {
		d.durationUpTo(v, "shutdown_delay", maxShutdownDelay, "a load balancer stops sending within seconds", &c.ShutdownDelay)
	}
	if v, ok := f["busy_poll"]; ok {
		d.durationUpTo(v, "busy_poll", maxBusyPoll, "a wait that long is one the loop should sleep through", &c.BusyPoll)
	}
}

// durationUpTo reads a duration of at most max into dst; why says, in the
// error, why longer makes no sense.
func (d *decoder) durationUpTo(v *yaml.Node, path string, max time.Duration, why string, dst *time.Duration) {
	dur, ok := d.duration(v, path)
	switch {
	case !ok:
	case dur > max:
		d.errorf(v, "%s: %s is longer than %s; %s", path, dur, max, why)
	default:
		*dst = dur
	}
}

// maxBusyPoll bounds busy_poll: past a millisecond the spin costs more CPU
// than a wake-up it saves could be worth, and it nears the loop's quiet
// spell (5 ms), after which an idle loop gives its CPU back.
const maxBusyPoll = time.Millisecond

// maxShutdownDelay bounds shutdown_delay: a drain that keeps accepting for
// longer is a typo more likely than a need.
const maxShutdownDelay = 5 * time.Minute

// parseResolver reads "ip:port", "[ipv6]:port", or an address alone (port 53).
func parseResolver(s string) (netip.AddrPort, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, ap.Port() != 0
	}
	if inner, ok := strings.CutPrefix(s, "["); ok {
		if s, ok = strings.CutSuffix(inner, "]"); !ok {
			return netip.AddrPort{}, false
		}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, 53), true
}

// seenListeners tracks names and addresses already used, with their lines.
type seenListeners struct {
	names map[string]int
	addrs map[netip.AddrPort]int
}

func (d *decoder) listeners(n *yaml.Node) []Listener {
	items, ok := d.list(n, "listeners", "listeners")
	if !ok {
		return nil
	}
	if len(items) == 0 {
		d.errorf(n, "listeners: at least one listener is required")
	}
	seen := seenListeners{names: map[string]int{}, addrs: map[netip.AddrPort]int{}}
	var ls []Listener
	for i, it := range items {
		ls = append(ls, d.listener(it, item("listeners", i), seen))
	}
	return ls
}

func (d *decoder) listener(n *yaml.Node, path string, seen seenListeners) Listener {
	l := Listener{Line: n.Line}
	f, ok := d.mapping(n, path, "name", "mode", "address", "sni_destination", "upstream_port", "tproxy", "tunnel_sni", "proxy_protocol", "proxy_protocol_from", "udp", "quic_deny")
	if !ok {
		return l
	}
	for _, key := range []string{"name", "mode", "address"} {
		if _, ok := f[key]; !ok {
			d.errorf(n, "%s: missing key %q", path, key)
		}
	}
	if v, ok := f["name"]; ok {
		if l.Name, ok = d.str(v, field(path, "name")); ok {
			if first, dup := seen.names[l.Name]; dup {
				d.errorf(v, "%s: listener name %q already used at line %d", field(path, "name"), l.Name, first)
			}
			seen.names[l.Name] = v.Line
		}
	}
	if v, ok := f["mode"]; ok {
		l.Mode = d.mode(v, field(path, "mode"))
	}
	if v, ok := f["address"]; ok {
		l.Address = d.listenAddress(v, field(path, "address"), seen)
	}

	// Fields that belong to one mode: a value for another mode is a
	// misunderstanding worth reporting, not something to ignore.
	only := func(key string, mode Mode) (*yaml.Node, bool) {
		v, ok := f[key]
		if ok && l.Mode != mode && l.Mode != "" {
			d.errorf(v, "%s: applies only to mode %s", field(path, key), mode)
			return nil, false
		}
		return v, ok && l.Mode == mode
	}
	if l.Mode == ModeTransparent {
		l.SNIDestination = Verify
	}
	if v, ok := only("sni_destination", ModeTransparent); ok {
		s, _ := d.oneOf(v, field(path, "sni_destination"), "sni_destination", string(Verify), string(Resolve), string(Trust))
		l.SNIDestination = SNIDestination(s)
	}
	if v, ok := only("tproxy", ModeTransparent); ok {
		l.TProxy, _ = d.boolean(v, field(path, "tproxy"))
	}
	if v, ok := only("udp", ModeTransparent); ok {
		l.UDP, _ = d.boolean(v, field(path, "udp"))
		if l.UDP && !l.TProxy {
			// A REDIRECTed datagram's original destination is lost: only
			// TPROXY delivers UDP with its destination intact.
			d.errorf(v, "%s: needs tproxy: true (UDP is intercepted with TPROXY only)", field(path, "udp"))
		}
	}
	if l.UDP {
		l.QUICDeny = QUICClose
	}
	if v, ok := f["quic_deny"]; ok {
		if s, ok := d.oneOf(v, field(path, "quic_deny"), "quic_deny", string(QUICClose), string(QUICDrop)); ok {
			l.QUICDeny = QUICDeny(s)
		}
		if !l.UDP {
			d.errorf(v, "%s: applies only with udp: true", field(path, "quic_deny"))
		}
	}
	if v, ok := f["proxy_protocol"]; ok {
		l.ProxyProtocol, _ = d.boolean(v, field(path, "proxy_protocol"))
		if l.ProxyProtocol && l.UDP {
			d.errorf(v, "%s: a UDP listener (udp: true) cannot read PROXY protocol headers", field(path, "proxy_protocol"))
		}
	}
	if v, ok := f["proxy_protocol_from"]; ok {
		if l.ProxyProtocolFrom = d.prefixes(v, field(path, "proxy_protocol_from")); !l.ProxyProtocol {
			d.errorf(v, "%s: applies only with proxy_protocol: true", field(path, "proxy_protocol_from"))
		}
	}
	if l.Mode == ModeSNI {
		l.UpstreamPort = 443
	}
	if v, ok := only("upstream_port", ModeSNI); ok {
		l.UpstreamPort, _ = d.port(v, field(path, "upstream_port"))
	}
	if l.Mode == ModeExplicit {
		l.TunnelSNI = TunnelMatch
	}
	if v, ok := only("tunnel_sni", ModeExplicit); ok {
		s, _ := d.oneOf(v, field(path, "tunnel_sni"), "tunnel_sni", string(TunnelMatch), string(TunnelLog), string(TunnelIgnore))
		l.TunnelSNI = TunnelSNI(s)
	}
	return l
}

// listenAddress reads "IP:port" (port 0: any free port); a host name is refused, since a listener
// binds one address and resolving names is not the loader's business.
func (d *decoder) listenAddress(n *yaml.Node, path string, seen seenListeners) netip.AddrPort {
	s, ok := d.str(n, path)
	if !ok {
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		d.errorf(n, "%s: invalid address %q; want IP:port with an IP address, e.g. 127.0.0.1:8443 or [::1]:8443", path, s)
		return netip.AddrPort{}
	case ap.Port() == 0:
		// Port 0 binds any free port; egressd prints the one it got. Tests
		// use it; two such listeners do not clash.
		return ap
	}
	if first, dup := seen.addrs[ap]; dup {
		d.errorf(n, "%s: address %s already used at line %d", path, ap, first)
	}
	seen.addrs[ap] = n.Line
	return ap
}

func (d *decoder) mode(n *yaml.Node, path string) Mode {
	s, ok := d.str(n, path)
	switch m := Mode(s); {
	case !ok:
	case m == ModeTransparent, m == ModeSNI, m == ModeExplicit:
		return m
	default:
		d.errorf(n, "%s: unknown mode %q; want transparent, sni or explicit", path, s)
	}
	return ""
}

func (d *decoder) timeouts(n *yaml.Node, t *Timeouts) {
	f, _ := d.mapping(n, "timeouts", "first_bytes", "client_hello", "connect", "idle")
	for _, e := range []struct {
		key string
		dst *time.Duration
	}{
		{"first_bytes", &t.FirstBytes},
		{"client_hello", &t.ClientHello},
		{"connect", &t.Connect},
		{"idle", &t.Idle},
	} {
		if v, ok := f[e.key]; ok {
			if dur, ok := d.duration(v, field("timeouts", e.key)); ok {
				*e.dst = dur
			}
		}
	}
}

func (d *decoder) log(n *yaml.Node, l *Log) {
	f, _ := d.mapping(n, "log", "format", "output")
	if v, ok := f["format"]; ok {
		if s, ok := d.oneOf(v, "log.format", "log format", "json", "text"); ok {
			l.Format = s
		}
	}
	if v, ok := f["output"]; ok {
		if s, ok := d.str(v, "log.output"); ok {
			l.Output = s
		}
	}
}

func (d *decoder) policy(n *yaml.Node, p *Policy) {
	f, _ := d.mapping(n, "policy", "enforce", "default", "rules")
	if v, ok := f["enforce"]; ok {
		p.Enforce, _ = d.boolean(v, "policy.enforce")
	}
	if v, ok := f["default"]; ok {
		p.Default, _ = d.action(v, "policy.default")
	}
	v, ok := f["rules"]
	if !ok || isNull(v) {
		return
	}
	items, _ := d.list(v, "policy.rules", "rules")
	names := map[string]int{}
	for i, it := range items {
		p.Rules = append(p.Rules, d.rule(it, item("policy.rules", i), names))
		p.RuleLines = append(p.RuleLines, it.Line)
	}
}

func (d *decoder) action(n *yaml.Node, path string) (policy.Action, bool) {
	s, ok := d.oneOf(n, path, "action", "allow", "deny")
	if s == "allow" {
		return policy.Allow, ok
	}
	return policy.Deny, ok
}

// rule reads one policy rule. A rule with no match field at all (only name
// and action) matches every connection: that is how a catch-all is written.
func (d *decoder) rule(n *yaml.Node, path string, names map[string]int) policy.Rule {
	var r policy.Rule
	f, ok := d.mapping(n, path, "name", "action", "fqdn", "destinations", "sources", "ports", "users", "protocols", "ja4")
	if !ok {
		return r
	}
	for _, key := range []string{"name", "action"} {
		if _, ok := f[key]; !ok {
			d.errorf(n, "%s: missing key %q", path, key)
		}
	}
	if v, ok := f["name"]; ok {
		if r.Name, ok = d.str(v, field(path, "name")); ok {
			if first, dup := names[r.Name]; dup {
				d.errorf(v, "%s: rule name %q already used at line %d", field(path, "name"), r.Name, first)
			}
			names[r.Name] = v.Line
		}
	}
	if v, ok := f["action"]; ok {
		r.Action, _ = d.action(v, field(path, "action"))
	}
	if v, ok := f["fqdn"]; ok {
		r.FQDN = d.patterns(v, field(path, "fqdn"))
	}
	if v, ok := f["destinations"]; ok {
		r.Destinations = d.prefixes(v, field(path, "destinations"))
	}
	if v, ok := f["sources"]; ok {
		r.Sources = d.prefixes(v, field(path, "sources"))
	}
	if v, ok := f["ports"]; ok {
		for i, it := range d.matchList(v, field(path, "ports"), "ports") {
			if pr, ok := d.portRange(it, item(field(path, "ports"), i)); ok {
				r.Ports = append(r.Ports, pr)
			}
		}
	}
	if v, ok := f["users"]; ok {
		r.Users = d.ruleUsers(v, field(path, "users"))
	}
	if v, ok := f["protocols"]; ok {
		p := field(path, "protocols")
		for i, it := range d.matchList(v, p, "protocols") {
			if s, ok := d.oneOf(it, item(p, i), "protocol", policy.ProtocolNames...); ok {
				r.Protocols = append(r.Protocols, s)
			}
		}
	}
	if v, ok := f["ja4"]; ok {
		r.JA4 = d.fingerprints(v, field(path, "ja4"), r)
	}
	return r
}

// fingerprints reads a rule's JA4 fingerprints, checked here (for the line
// number) and compared exactly by the policy. A fingerprint is learnt
// from a TLS ClientHello that comes before the decision, so a rule that
// can match no such connection is refused rather than left never to match.
func (d *decoder) fingerprints(n *yaml.Node, path string, r policy.Rule) []string {
	var out []string
	for i, it := range d.matchList(n, path, "JA4 fingerprints") {
		s, ok := d.str(it, item(path, i))
		if !ok {
			continue
		}
		if err := clienthello.CheckJA4(s); err != nil {
			d.errorf(it, "%s: %v", item(path, i), err)
			continue
		}
		out = append(out, s)
	}
	switch {
	case len(r.Users) > 0:
		d.errorf(n, "%s: a rule with users never matches a fingerprint: proxy requests are decided before their ClientHello", path)
	case len(r.Protocols) > 0 && !slices.Contains(r.Protocols, "tls"):
		d.errorf(n, "%s: only TLS connections have a fingerprint, and protocols does not list tls", path)
	}
	return out
}

// patterns reads fqdn patterns, checked here (for the line number) and
// kept as written; policy.Compile compiles them.
func (d *decoder) patterns(n *yaml.Node, path string) []string {
	var out []string
	for i, it := range d.matchList(n, path, "names") {
		s, ok := d.str(it, item(path, i))
		if !ok {
			continue
		}
		if _, err := fqdn.ParsePattern(s); err != nil {
			d.errorf(it, "%s: %v", item(path, i), err)
			continue
		}
		out = append(out, s)
	}
	return out
}

// prefixes reads CIDRs; a bare address stands for itself (/32 or /128).
// They come back canonical (policy.CanonicalPrefix), as every matcher of
// peers by CIDR (rules, proxy_protocol_from, dns.clients) compares them.
// A CIDR with host bits set ("10.1.2.3/24") is refused: it is usually a
// typo for the address alone or for the network, and guessing would be
// wrong half the time.
func (d *decoder) prefixes(n *yaml.Node, path string) []netip.Prefix {
	var out []netip.Prefix
	for i, it := range d.matchList(n, path, "CIDRs") {
		p := item(path, i)
		s, ok := d.str(it, p)
		if !ok {
			continue
		}
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				d.errorf(it, "%s: invalid CIDR %q; want e.g. 10.0.0.0/8, 2001:db8::/32 or an address", p, s)
				continue
			}
			out = append(out, policy.CanonicalPrefix(netip.PrefixFrom(a, a.BitLen())))
			continue
		}
		switch pfx, err := netip.ParsePrefix(s); {
		case err != nil:
			d.errorf(it, "%s: invalid CIDR %q; want e.g. 10.0.0.0/8, 2001:db8::/32 or an address", p, s)
		case pfx != pfx.Masked():
			d.errorf(it, "%s: %s has host bits set; write %s for the network or %s for the address",
				p, s, pfx.Masked(), netip.PrefixFrom(pfx.Addr(), pfx.Addr().BitLen()))
		default:
			out = append(out, policy.CanonicalPrefix(pfx))
		}
	}
	return out
}

// portRange reads a port (443) or an inclusive range ("8000-8999").
func (d *decoder) portRange(n *yaml.Node, path string) (policy.PortRange, bool) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		if lo, hi, ok := strings.Cut(n.Value, "-"); ok {
			l, err1 := parsePort(lo)
			h, err2 := parsePort(hi)
			switch {
			case err1 != nil || err2 != nil:
				d.errorf(n, "%s: invalid port range %q; want e.g. \"8000-8999\" with ports from 1 to 65535", path, n.Value)
			case l > h:
				d.errorf(n, "%s: port range %q is reversed", path, n.Value)
			default:
				return policy.PortRange{Lo: l, Hi: h}, true
			}
			return policy.PortRange{}, false
		}
		p, err := parsePort(n.Value)
		if err != nil {
			d.errorf(n, "%s: %v", path, err)
			return policy.PortRange{}, false
		}
		return policy.PortRange{Lo: p, Hi: p}, true
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		d.errorf(n, "%s: want a port (443) or a range (\"8000-8999\"), got %s", path, describe(n))
		return policy.PortRange{}, false
	}
	p, ok := d.port(n, path)
	return policy.PortRange{Lo: p, Hi: p}, ok
}
