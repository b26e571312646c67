package policy

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/fqdn"
)

// Policy is a compiled, immutable rule list. It is safe for concurrent use.
type Policy struct {
	rules []rule

	// Rule indices by what their fqdn patterns need of a name, each list
	// ascending and without repeats. Every rule is in exactly the lists of
	// its patterns, or in unnamed when it has no fqdn field.
	exact   map[string][]int32 // "example.com": rules naming it
	below   map[string][]int32 // "*.example.com": rules under key "example.com"
	anyName []int32            // "*"
	unnamed []int32            // no fqdn field: match with or without a name

	fallback Decision
}

// Len returns the number of rules.
func (p *Policy) Len() int { return len(p.rules) }

// rule is a Rule reduced to what Decide checks besides the name.
type rule struct {
	sources      []netip.Prefix
	destinations []netip.Prefix
	ports        []PortRange
	users        []string
	protocols    uint8    // protocolBit set; 0: any protocol
	ja4          []string // fingerprints; nil: any client
	decision     Decision
}

// Compile checks and indexes rules, in order, with def as the action when no
// rule matches. Rule names must be present and unique, since decisions and
// logs name the rule. Prefixes are stored masked, and IPv4-mapped IPv6
// prefixes (::ffff:10.0.0.0/104) as IPv4, because Decide compares unmapped
// addresses. Every problem found is reported, joined into one error.
func Compile(rules []Rule, def Action) (*Policy, error) {
	var errs []error
	if def != Allow && def != Deny {
		errs = append(errs, fmt.Errorf("default action: unknown %v", def))
	}
	if len(rules) > math.MaxInt32 {
		return nil, fmt.Errorf("%d rules: too many", len(rules))
	}
	p := &Policy{
		rules: make([]rule, len(rules)),
		exact: make(map[string][]int32),
		below: make(map[string][]int32),
		fallback: Decision{
			Action: def,
			Index:  -1,
			Reason: "no rule matched: default " + def.String(),
		},
	}
	seen := make(map[string]int, len(rules))
	for i, r := range rules {
		fail := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("rule %d %q: %s", i, r.Name, fmt.Sprintf(format, args...)))
		}
		switch j, dup := seen[r.Name]; {
		case r.Name == "":
			fail("missing name")
		case dup:
			fail("name already used by rule %d", j)
		default:
			seen[r.Name] = i
		}
		if r.Action != Allow && r.Action != Deny {
			fail("unknown %v", r.Action)
		}
		for _, pr := range r.Ports {
			if pr.Lo == 0 || pr.Lo > pr.Hi {
				fail("bad port range %d-%d", pr.Lo, pr.Hi)
			}
		}
		for _, u := range r.Users {
			if u == "" {
				fail("empty user name")
			}
		}
		for _, fp := range r.JA4 {
			if err := clienthello.CheckJA4(fp); err != nil {
				fail("%v", err)
			}
		}
		c := rule{ports: slices.Clone(r.Ports), users: slices.Clone(r.Users), ja4: slices.Clone(r.JA4)}
		for _, name := range r.Protocols {
			b := protocolBit(name)
			if b == 0 {
				fail("unknown protocol %q; want one of %s", name, strings.Join(ProtocolNames, ", "))
			}
			c.protocols |= b
		}
		var err error
		if c.sources, err = canonical(r.Sources); err != nil {
			fail("sources: %v", err)
		}
		if c.destinations, err = canonical(r.Destinations); err != nil {
			fail("destinations: %v", err)
		}
		c.decision = Decision{
			Action:       r.Action,
			Rule:         r.Name,
			Index:        i,
			Reason:       fmt.Sprintf("matched rule %q", r.Name),
			Destinations: c.destinations,
			ByFQDN:       len(r.FQDN) > 0,
		}
		p.rules[i] = c
		if len(r.FQDN) == 0 {
			p.unnamed = append(p.unnamed, int32(i))
		}
		for _, s := range r.FQDN {
			pat, err := fqdn.ParsePattern(s)
			if err != nil {
				fail("%v", err)
				continue
			}
			switch {
			case !pat.Wildcard:
				p.exact[pat.Base] = appendOnce(p.exact[pat.Base], i)
			case pat.Base == "":
				p.anyName = appendOnce(p.anyName, i)
			default:
				p.below[pat.Base] = appendOnce(p.below[pat.Base], i)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// appendOnce adds rule i to an ascending list unless a repeated pattern of
// the same rule put it there already.
func appendOnce(ids []int32, i int) []int32 {
	if n := len(ids); n > 0 && ids[n-1] == int32(i) {
		return ids
	}
	return append(ids, int32(i))
}

// CanonicalPrefix is p as addresses are compared with it: an IPv4-mapped
// prefix (::ffff:10.0.0.0/104) as the IPv4 one it means (10.0.0.0/8),
// since every address is unmapped before the comparison; masked.
func CanonicalPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// canonical returns a masked copy of prefixes, IPv4-mapped ones as IPv4,
// so that the caller's slice is never shared with decisions.
func canonical(prefixes []netip.Prefix) ([]netip.Prefix, error) {
	if len(prefixes) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, len(prefixes))
	var bad []string
	for i, p := range prefixes {
		if !p.IsValid() {
			bad = append(bad, p.String())
			continue
		}
		out[i] = CanonicalPrefix(p)
	}
	if bad != nil {
		return nil, fmt.Errorf("invalid prefix %s", strings.Join(bad, ", "))
	}
	return out, nil
}
