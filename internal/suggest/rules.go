package suggest

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/egressd/egressd/internal/policy"
)

// Rule is one suggested allow rule and what it covers.
type Rule struct {
	Name string
	// Exactly one of Users and Sources is set.
	Users   []string
	Sources []netip.Prefix
	// Exactly one of FQDN and Destinations is set.
	FQDN         []string
	Destinations []netip.Prefix
	Ports        []policy.PortRange // nil: any port (a connection's port was not known)
	Protocols    []string           // nil: any protocol

	// What was seen: connections, bytes each way, when.
	Conns       int
	BytesUp     int64
	BytesDown   int64
	First, Last time.Time
	// Names are the names behind FQDN's "*." patterns; SourcesSeen are the
	// addresses behind Sources (none for a rule by Users).
	Names       []string
	SourcesSeen []netip.Addr

	kind kind
}

// Policy returns r as the policy package takes it.
func (r *Rule) Policy() policy.Rule {
	return policy.Rule{Name: r.Name, Action: policy.Allow, FQDN: r.FQDN, Destinations: r.Destinations,
		Sources: r.Sources, Ports: r.Ports, Users: r.Users, Protocols: r.Protocols}
}

// unit is one destination (a name pattern or an address) for one way of
// naming who connects (users or sources), with everything seen of it.
type unit struct {
	kind    kind
	target  string // the pattern, or the address
	byUser  bool
	users   map[string]bool
	srcs    map[netip.Addr]bool
	ports   map[uint16]bool // 0: a port not known
	protos  map[string]bool // "": a protocol rules cannot name
	names   map[string]bool // the names behind a "*." pattern
	seen    tally
	address netip.Addr // for byAddress
}

type unitKey struct {
	kind   kind
	target string
	byUser bool
}

// group is what makes units one rule: the same people, ports and
// protocols, the same kind of destination.
type group struct {
	kind   kind
	byUser bool
	who    string // users or source prefixes, joined
	ports  string
	protos string
}

// Rules groups what was added into rules, in a deterministic order: by who
// (users first, then sources), then by destination. Every connection
// added and not Left is allowed by one of them.
func (b *Builder) Rules() []Rule {
	patterns := collapse(b.names(), b.opts.Collapse)
	units := make(map[unitKey]*unit)
	for k, t := range b.seen {
		uk := unitKey{kind: k.kind, byUser: k.user != ""}
		switch k.kind {
		case byAddress:
			uk.target = k.dst.String()
		default:
			uk.target = patterns[k.name]
		}
		u := units[uk]
		if u == nil {
			u = &unit{kind: k.kind, target: uk.target, byUser: uk.byUser, users: map[string]bool{},
				srcs: map[netip.Addr]bool{}, ports: map[uint16]bool{}, protos: map[string]bool{},
				names: map[string]bool{}, address: k.dst}
			units[uk] = u
		}
		if k.user != "" {
			u.users[k.user] = true
		} else {
			u.srcs[k.src] = true
		}
		u.ports[k.port] = true
		u.protos[k.proto] = true
		if k.name != "" && k.name != uk.target {
			u.names[k.name] = true
		}
		u.seen.add(*t)
	}

	rules := make(map[group]*Rule)
	for _, u := range units {
		g := group{kind: u.kind, byUser: u.byUser, ports: portsKey(u.ports), protos: protosKey(u)}
		var users []string
		var sources []netip.Prefix
		if u.byUser {
			users = sortedKeys(u.users, strings.Compare)
			g.who = strings.Join(users, "\x00")
		} else {
			sources = Covering(sortedKeys(u.srcs, netip.Addr.Compare))
			g.who = fmt.Sprint(sources)
		}
		r := rules[g]
		if r == nil {
			r = &Rule{Users: users, Sources: sources, Ports: portRanges(u.ports), Protocols: protocols(u), kind: u.kind}
			rules[g] = r
		}
		if u.kind == byAddress {
			r.Destinations = append(r.Destinations, netip.PrefixFrom(u.address, u.address.BitLen()))
		} else {
			r.FQDN = append(r.FQDN, u.target)
		}
		r.Names = append(r.Names, sortedKeys(u.names, strings.Compare)...)
		for a := range u.srcs {
			r.SourcesSeen = append(r.SourcesSeen, a)
		}
		r.add(u.seen)
	}

	out := make([]Rule, 0, len(rules))
	for _, r := range rules {
		slices.SortFunc(r.FQDN, comparePatterns)
		slices.SortFunc(r.Destinations, comparePrefixes)
		slices.SortFunc(r.Names, comparePatterns)
		slices.SortFunc(r.SourcesSeen, netip.Addr.Compare)
		r.SourcesSeen = slices.Compact(r.SourcesSeen)
		out = append(out, *r)
	}
	slices.SortFunc(out, compareRules)
	name(out)
	return out
}

func (r *Rule) add(t tally) {
	s := tally{conns: r.Conns, up: r.BytesUp, down: r.BytesDown, first: r.First, last: r.Last}
	s.add(t)
	r.Conns, r.BytesUp, r.BytesDown, r.First, r.Last = s.conns, s.up, s.down, s.first, s.last
}

// names returns every name seen, once.
func (b *Builder) names() []string {
	set := make(map[string]bool)
	for k := range b.seen {
		if k.name != "" {
			set[k.name] = true
		}
	}
	return sortedKeys(set, strings.Compare)
}

func sortedKeys[K comparable](m map[K]bool, cmp func(a, b K) int) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, cmp)
	return out
}

// portsKey is the set of ports as a group key; "" for any port.
func portsKey(ports map[uint16]bool) string {
	if ports[0] {
		return ""
	}
	return fmt.Sprint(sortedKeys(ports, cmp.Compare[uint16]))
}

// portRanges writes the ports seen, runs of three or more consecutive ports
// as one range; nil (any port) when a port was not known, since a rule
// with ports never matches a connection without one.
func portRanges(ports map[uint16]bool) []policy.PortRange {
	if ports[0] {
		return nil
	}
	var out []policy.PortRange
	for _, p := range sortedKeys(ports, cmp.Compare[uint16]) {
		if n := len(out); n > 0 && out[n-1].Hi+1 == p {
			out[n-1].Hi = p
			continue
		}
		out = append(out, policy.PortRange{Lo: p, Hi: p})
	}
	// A run of two is clearer as two ports.
	var split []policy.PortRange
	for _, r := range out {
		if r.Hi == r.Lo+1 {
			split = append(split, policy.PortRange{Lo: r.Lo, Hi: r.Lo}, policy.PortRange{Lo: r.Hi, Hi: r.Hi})
			continue
		}
		split = append(split, r)
	}
	return split
}

// protocols are the protocols a rule lists: none for a name the client
// sent (the name is what decides), else those seen, in policy's order; none
// when one seen is not a protocol a rule can name.
func protocols(u *unit) []string {
	if u.kind == byName || u.protos[""] {
		return nil
	}
	var out []string
	for _, p := range policy.ProtocolNames {
		if u.protos[p] {
			out = append(out, p)
		}
	}
	return out
}

func protosKey(u *unit) string { return strings.Join(protocols(u), ",") }

// comparePatterns orders names by their domain, parent labels first, so
// that "example.com", "*.example.com" and "a.example.com" sit together.
func comparePatterns(a, b string) int {
	return cmp.Or(cmp.Compare(reversed(a), reversed(b)), strings.Compare(a, b))
}

// reversed is a name's labels last to first: "a.example.com" ->
// "com.example.a", with a wildcard label after its domain.
func reversed(name string) string {
	labels := strings.Split(name, ".")
	slices.Reverse(labels)
	return strings.Join(labels, ".")
}

func comparePrefixes(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// compareRules orders rules by who (users, then sources), then by the
// kind and first of their destinations.
func compareRules(a, b Rule) int {
	return cmp.Or(
		compareBool(len(a.Users) == 0, len(b.Users) == 0), // users first
		slices.Compare(a.Users, b.Users),
		slices.CompareFunc(a.Sources, b.Sources, comparePrefixes),
		compareBool(len(a.FQDN) == 0, len(b.FQDN) == 0), // names first
		cmp.Compare(len(a.Protocols), len(b.Protocols)),
		slices.CompareFunc(a.FQDN, b.FQDN, comparePatterns),
		slices.CompareFunc(a.Destinations, b.Destinations, comparePrefixes),
		slices.CompareFunc(a.Ports, b.Ports, func(x, y policy.PortRange) int {
			return cmp.Or(cmp.Compare(x.Lo, y.Lo), cmp.Compare(x.Hi, y.Hi))
		}),
		slices.Compare(a.Protocols, b.Protocols),
		cmp.Compare(a.kind, b.kind),
	)
}

// compareBool orders false before true.
func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

// name gives each rule a name after its first destination ("allow-github.com",
// "allow-github.com-and-2-more"), numbered when two would share one.
func name(rules []Rule) {
	used := make(map[string]bool)
	for i := range rules {
		r := &rules[i]
		first, n := "", len(r.FQDN)+len(r.Destinations)
		if len(r.FQDN) > 0 {
			first = r.FQDN[0]
		} else {
			first = r.Destinations[0].Addr().String()
		}
		base := "allow-" + first
		if n > 1 {
			base += "-and-" + strconv.Itoa(n-1) + "-more"
		}
		r.Name = base
		for k := 2; used[r.Name]; k++ {
			r.Name = base + "-" + strconv.Itoa(k)
		}
		used[r.Name] = true
	}
}
