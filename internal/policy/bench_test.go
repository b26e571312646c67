package policy

import (
	"fmt"
	"net/netip"
	"testing"
)

// benchRules spreads n fqdn patterns over rules of ten, half exact names and
// half wildcards, as a large generated allow list would look, with three
// address rules (first, middle, last) that never match the benchmark's
// destination, so that every decision also checks them.
func benchRules(n int) []Rule {
	addrRule := func(name string) Rule {
		return Rule{Name: name, Action: Allow, Destinations: benchPrefixes, Ports: []PortRange{{22, 22}}}
	}
	rules := []Rule{addrRule("ip-first")}
	for i := 0; i < n; i += 10 {
		r := Rule{Name: fmt.Sprint("r", i), Action: Allow, Ports: []PortRange{{443, 443}}}
		for k := i; k < min(i+10, n); k++ {
			if k%2 == 0 {
				r.FQDN = append(r.FQDN, fmt.Sprintf("h%d.example.com", k))
			} else {
				r.FQDN = append(r.FQDN, fmt.Sprintf("*.z%d.example.net", k))
			}
		}
		rules = append(rules, r)
		if i == n/20*10 {
			rules = append(rules, addrRule("ip-middle"))
		}
	}
	return append(rules, addrRule("ip-last"))
}

var benchPrefixes = []netip.Prefix{prefix("192.0.2.0/24"), prefix("2001:db8::/32")}

func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{10, 1_000, 100_000} {
		p, err := Compile(benchRules(n), Deny)
		if err != nil {
			b.Fatal(err)
		}
		last := n - 1 // a wildcard in the last rule
		dst := addr("198.51.100.7")
		inputs := []struct {
			name string
			in   Input
			rule bool // whether a rule decides
		}{
			{"exact", Input{FQDN: fmt.Sprintf("h%d.example.com", n-2), Port: 443, Dst: dst, Protocol: "tls"}, true},
			{"wildcard", Input{FQDN: fmt.Sprintf("a.b.z%d.example.net", last), Port: 443, Dst: dst}, true},
			{"nomatch", Input{FQDN: "a.b.c.d.nothing.example.org", Port: 443, Dst: dst}, false},
			{"noname", Input{Port: 443, Dst: dst}, false},
		}
		for _, tt := range inputs {
			b.Run(fmt.Sprintf("patterns=%d/%s", n, tt.name), func(b *testing.B) {
				if got := p.Decide(tt.in); (got.Index >= 0) != tt.rule {
					b.Fatalf("Decide(%+v) = %+v, want a rule: %v", tt.in, got, tt.rule)
				}
				b.ReportAllocs()
				for b.Loop() {
					p.Decide(tt.in)
				}
			})
		}
	}
}

// BenchmarkCompile measures a (re)load of a large generated allow list.
func BenchmarkCompile(b *testing.B) {
	rules := benchRules(100_000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compile(rules, Deny); err != nil {
			b.Fatal(err)
		}
	}
}
