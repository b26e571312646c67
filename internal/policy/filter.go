package policy

import (
	"net/netip"
	"slices"
)

// MayAllow answers the DNS filter's question: could a connection from src
// to name be allowed, whatever its port, protocol and client fingerprint?
// dst is the address the name resolved to, or the zero Addr before the
// answer is known.
//
// The rules are walked in order as Decide walks them, but a port, a
// protocol or a fingerprint is unknown, so a rule that lists them only
// "may" match: an allow rule that may match answers yes, and a deny rule
// blocks the rest only if it certainly matches (no ports, no protocols, no
// ja4). Rules with users are
// skipped: a client's own lookups serve connections without a user. With dst unknown, a rule
// with destinations cannot be judged; if such an allow rule could match,
// ok is false and byAddress true: the answer's addresses will tell (call
// again with each of them).
//
// It is not on the per-connection path: it allocates a little and is meant
// for one call per DNS query.
func (p *Policy) MayAllow(src netip.Addr, name string, dst netip.Addr) (ok, byAddress bool) {
	c := conn{src: plain(src), dst: plain(dst)}
	for _, i := range p.candidates(name) {
		r := &p.rules[i]
		if len(r.sources) > 0 && !contains(r.sources, c.src) {
			continue
		}
		// A rule for proxy users never matches what the name is resolved
		// for: connections that reach egressd with a DNS-learnt name carry
		// no user (explicit clients name their destination and egressd
		// resolves it itself). So such an allow cannot allow, and such a
		// deny does not certainly match.
		if len(r.users) > 0 {
			continue
		}
		if len(r.destinations) > 0 {
			if !c.dst.IsValid() {
				byAddress = byAddress || r.decision.Action == Allow
				continue
			}
			if !contains(r.destinations, c.dst) {
				continue
			}
		}
		if r.decision.Action == Allow {
			return true, false
		}
		if len(r.ports) == 0 && r.protocols == 0 && len(r.ja4) == 0 {
			return false, false // a deny that certainly matches: nothing after it can allow
		}
	}
	if p.fallback.Action == Allow {
		return true, false
	}
	return false, byAddress
}

// DeniedByName reports whether a deny rule naming name decides any
// connection from src to name (whatever its address, port, protocol and
// client fingerprint) before an allow rule could. The DNS filter asks it
// for every name a CNAME chain leads to, so that an allowed alias cannot
// launder a denied name (CNAME cloaking). Only rules with fqdn count as
// naming it: a catch-all deny must not refuse every CDN name an allowed
// alias points to.
func (p *Policy) DeniedByName(src netip.Addr, name string) bool {
	s := plain(src)
	for _, i := range p.candidates(name) {
		r := &p.rules[i]
		if len(r.sources) > 0 && !contains(r.sources, s) || len(r.users) > 0 {
			continue
		}
		if r.decision.Action == Allow {
			return false // this allow may decide first
		}
		_, unnamed := slices.BinarySearch(p.unnamed, i)
		if !unnamed && len(r.destinations) == 0 && len(r.ports) == 0 && r.protocols == 0 && len(r.ja4) == 0 {
			return true
		}
	}
	return false
}

// candidates returns, ascending, the rules whose name part can match name:
// the same lists Decide looks at.
func (p *Policy) candidates(name string) []int32 {
	ids := slices.Clone(p.unnamed)
	if name != "" {
		ids = append(ids, p.exact[name]...)
		for i := 0; i < len(name); i++ {
			if name[i] == '.' {
				ids = append(ids, p.below[name[i+1:]]...)
			}
		}
		ids = append(ids, p.anyName...)
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}
