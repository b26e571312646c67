package fqdn

import (
	"errors"
	"fmt"
	"strings"
)

// Pattern is a compiled name pattern from a policy rule.
//
// Three shapes exist, and only three, so that a reader of the policy can tell
// at a glance what a rule covers:
//   - "example.com": that name only;
//   - "*.example.com": any name strictly below example.com, at any depth
//     ("a.example.com", "a.b.example.com"), never example.com itself — list
//     both when both are meant;
//   - "*": any FQDN at all, but never a connection without one (an IP literal
//     or no name), so "*" is not "match everything".
type Pattern struct {
	// Base is the normalised name the pattern hangs from; "" for "*".
	Base string
	// Wildcard is set for "*.Base" and for "*".
	Wildcard bool
}

// ParsePattern compiles a pattern as written in the policy. Base is normalised
// like a destination name (case, trailing dot, IDN), so "*.Bücher.Example."
// and "*.xn--bcher-kva.example" are the same pattern.
//
// A "*" is allowed only as the whole first label: "foo*.com", "*.*.com" and
// "a.*.com" are errors rather than guesses, and so are IP literals, which
// belong in a rule's destinations.
func ParsePattern(s string) (Pattern, error) {
	switch s {
	case "":
		return Pattern{}, errors.New("empty fqdn pattern")
	case "*":
		return Pattern{Wildcard: true}, nil
	}
	base, wildcard := strings.CutPrefix(s, "*.")
	if strings.Contains(base, "*") {
		return Pattern{}, fmt.Errorf(`fqdn pattern %q: "*" is allowed only as the whole first label, as in "*.example.com"`, s)
	}
	name, problem := normalize(base)
	switch {
	case problem == problemIP:
		return Pattern{}, fmt.Errorf("fqdn pattern %q: %s; match addresses with destinations", s, problem)
	case problem != "":
		return Pattern{}, fmt.Errorf("fqdn pattern %q: %s", s, problem)
	}
	return Pattern{Base: name, Wildcard: wildcard}, nil
}

// Match reports whether name, already normalised by Normalize, matches the
// pattern. The empty name (no FQDN) matches no pattern.
func (p Pattern) Match(name string) bool {
	switch {
	case name == "":
		return false
	case !p.Wildcard:
		return name == p.Base
	case p.Base == "":
		return true
	}
	n := len(name) - len(p.Base)
	return n > 1 && name[n-1] == '.' && name[n:] == p.Base
}

// String returns the pattern in its normalised written form.
func (p Pattern) String() string {
	switch {
	case !p.Wildcard:
		return p.Base
	case p.Base == "":
		return "*"
	}
	return "*." + p.Base
}
