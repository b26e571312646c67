package policy

import (
	"net/netip"
	"strings"
	"testing"
)

func TestDecideDial(t *testing.T) {
	p, err := Compile([]Rule{
		{Name: "open", Action: Allow, FQDN: []string{"open.test"}},
		{Name: "lab", Action: Allow, FQDN: []string{"lab.test"}, Destinations: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		{Name: "block", Action: Deny, FQDN: []string{"block.test"}, Destinations: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
	}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	tests := []struct {
		name    string
		fqdn    string
		answers []string
		action  Action
		hard    bool
		reason  string
	}{
		{"public", "open.test", []string{"198.51.100.7"}, Allow, false, `matched rule "open"`},
		{"metadata", "open.test", []string{"169.254.169.254"}, Deny, true, "open.test resolves to restricted address 169.254.169.254"},
		{"mixed", "open.test", []string{"198.51.100.7", "10.1.2.3"}, Deny, true, "resolves to restricted address 10.1.2.3"},
		{"covered", "lab.test", []string{"10.1.2.3"}, Allow, false, `matched rule "lab"`},
		{"covered but mixed", "lab.test", []string{"10.1.2.3", "127.0.0.1"}, Deny, true, "127.0.0.1"},
		{"deny restricted uncovered", "other.test", []string{"127.0.0.1"}, Deny, true, "default"},
		{"deny covered by rule", "block.test", []string{"127.0.0.1"}, Deny, false, `matched rule "block"`},
		{"deny public", "other.test", []string{"198.51.100.7"}, Deny, false, "default"},
	}
	t.Run("original destination", func(t *testing.T) {
		d := p.DecideDial(Input{Dst: a("169.254.169.254"), Port: 443, FQDN: "open.test"})
		if d.Action != Deny || !d.Hard || !strings.Contains(d.Reason, "destination 169.254.169.254 is restricted") {
			t.Errorf("DecideDial(metadata as original dst) = %v hard=%v %q", d.Action, d.Hard, d.Reason)
		}
	})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ans []netip.Addr
			for _, s := range tc.answers {
				ans = append(ans, a(s))
			}
			d := p.DecideDial(Input{Dst: ans[0], Port: 443, FQDN: tc.fqdn}, ans...)
			if d.Action != tc.action || d.Hard != tc.hard || !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("DecideDial(%s, %v) = %v hard=%v %q; want %v hard=%v containing %q",
					tc.fqdn, tc.answers, d.Action, d.Hard, d.Reason, tc.action, tc.hard, tc.reason)
			}
		})
	}
}
