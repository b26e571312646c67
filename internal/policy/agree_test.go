package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/egressd/egressd/internal/fqdn"
)

// linearDecide is the policy's definition written plainly: every rule in
// order, every given field checked. The index in Decide must agree with it.
func linearDecide(t *testing.T, rules []Rule, in Input) int {
	t.Helper()
	in.Src, in.Dst = plain(in.Src), plain(in.Dst)
	for i, r := range rules {
		if len(r.FQDN) > 0 {
			ok := false
			for _, s := range r.FQDN {
				p, err := fqdn.ParsePattern(s)
				if err != nil {
					t.Fatalf("ParsePattern(%q) = %v", s, err)
				}
				ok = ok || p.Match(in.FQDN)
			}
			if !ok {
				continue
			}
		}
		src, err := canonical(r.Sources)
		if err != nil {
			t.Fatal(err)
		}
		dst, err := canonical(r.Destinations)
		if err != nil {
			t.Fatal(err)
		}
		if (len(src) == 0 || contains(src, in.Src)) &&
			(len(dst) == 0 || contains(dst, in.Dst)) &&
			(len(r.Ports) == 0 || inPorts(r.Ports, in.Port)) &&
			(len(r.Protocols) == 0 || slices.Contains(r.Protocols, in.Protocol)) &&
			(len(r.JA4) == 0 || in.JA4 != "" && slices.Contains(r.JA4, in.JA4)) {
			return i
		}
	}
	return -1
}

func TestDecideAgreesWithLinearScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	labels := []string{"a", "b", "c", "example", "com", "net"}
	name := func() string {
		n := 1 + rng.IntN(4)
		s := labels[rng.IntN(len(labels))]
		for range n - 1 {
			s = labels[rng.IntN(len(labels))] + "." + s
		}
		return s
	}
	fingerprints := []string{goJA4, chromeJA4}
	addrs := []netip.Addr{{}, addr("10.0.0.1"), addr("10.1.0.1"), addr("::ffff:10.0.0.1"), addr("2001:db8::1"), addr("192.0.2.1")}
	prefixes := []netip.Prefix{prefix("10.0.0.0/16"), prefix("10.0.0.0/8"), prefix("2001:db8::/32"), prefix("0.0.0.0/0")}
	pick := func() []netip.Prefix {
		if rng.IntN(3) > 0 {
			return nil
		}
		return []netip.Prefix{prefixes[rng.IntN(len(prefixes))]}
	}
	for round := range 200 {
		rules := make([]Rule, 1+rng.IntN(20))
		for i := range rules {
			r := Rule{Name: fmt.Sprint("r", i), Action: Action(rng.IntN(2)), Sources: pick(), Destinations: pick()}
			for range rng.IntN(4) {
				switch rng.IntN(5) {
				case 0:
					r.FQDN = append(r.FQDN, "*")
				case 1, 2:
					r.FQDN = append(r.FQDN, "*."+name())
				default:
					r.FQDN = append(r.FQDN, name())
				}
			}
			if rng.IntN(3) == 0 {
				lo := uint16(1 + rng.IntN(4))
				r.Ports = []PortRange{{lo, lo + uint16(rng.IntN(2))}}
			}
			if rng.IntN(3) == 0 {
				r.Protocols = []string{ProtocolNames[rng.IntN(len(ProtocolNames))]}
			}
			if rng.IntN(4) == 0 {
				r.JA4 = []string{fingerprints[rng.IntN(len(fingerprints))]}
			}
			rules[i] = r
		}
		p, err := Compile(rules, Deny)
		if err != nil {
			t.Fatalf("Compile = %v", err)
		}
		for range 200 {
			in := Input{Src: addrs[rng.IntN(len(addrs))], Dst: addrs[rng.IntN(len(addrs))], Port: uint16(rng.IntN(5))}
			if k := rng.IntN(len(ProtocolNames) + 1); k < len(ProtocolNames) {
				in.Protocol = ProtocolNames[k]
			}
			if rng.IntN(5) > 0 {
				in.FQDN = name()
			}
			if k := rng.IntN(len(fingerprints) + 1); k < len(fingerprints) {
				in.JA4 = fingerprints[k]
			}
			if got, want := p.Decide(in).Index, linearDecide(t, rules, in); got != want {
				t.Fatalf("round %d: Decide(%+v) = rule %d, want %d; rules %+v", round, in, got, want, rules)
			}
		}
	}
}
