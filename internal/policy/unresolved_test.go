package policy

import (
	"net/netip"
	"testing"
)

func TestDecideName(t *testing.T) {
	src := netip.MustParseAddr("10.1.2.3")
	cases := []struct {
		name    string
		rules   []Rule
		def     Action
		fqdn    string
		action  Action
		resolve bool
	}{
		{"allowed name", []Rule{{Name: "a", Action: Allow, FQDN: []string{"ok.test"}}}, Deny, "ok.test", Allow, true},
		{"denied by default", []Rule{{Name: "a", Action: Allow, FQDN: []string{"ok.test"}}}, Deny, "secret.attacker.test", Deny, false},
		{"denied by a rule", []Rule{{Name: "d", Action: Deny, FQDN: []string{"*.attacker.test"}}}, Allow, "x.attacker.test", Deny, false},
		{"address rule may allow", []Rule{{Name: "net", Action: Allow, Destinations: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}}, Deny, "any.test", Deny, true},
		{"address rule for other sources", []Rule{{Name: "net", Action: Allow, Sources: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, Destinations: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}}, Deny, "any.test", Deny, false},
		{"address rule after the deny", []Rule{
			{Name: "d", Action: Deny, FQDN: []string{"bad.test"}},
			{Name: "net", Action: Allow, Destinations: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
		}, Deny, "bad.test", Deny, false},
		{"address rule for another port", []Rule{{Name: "net", Action: Allow, Ports: []PortRange{{22, 22}}, Destinations: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}}, Deny, "any.test", Deny, false},
		{"named address rule", []Rule{{Name: "n", Action: Allow, FQDN: []string{"*.cdn.test"}, Destinations: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}}, Deny, "a.cdn.test", Deny, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compile(tc.rules, tc.def)
			if err != nil {
				t.Fatal(err)
			}
			in := Input{Src: src, FQDN: tc.fqdn, Port: 443, Protocol: "tls"}
			d, resolve := p.DecideName(in)
			if d.Action != tc.action || resolve != tc.resolve {
				t.Errorf("DecideName(%q) = %v, resolve %v; want %v, resolve %v", tc.fqdn, d.Action, resolve, tc.action, tc.resolve)
			}
		})
	}
}

// TestLocal: the forwarder's default clients are the local ranges as the
// socket reports the peer; an address that only embeds a private IPv4
// address (Teredo, 6to4: the embedding is the client's choice) is not one.
func TestLocal(t *testing.T) {
	for addr, want := range map[string]bool{
		"10.1.2.3": true, "::ffff:192.168.1.1": true, "fe80::1%eth0": true, "127.0.0.1": true,
		"198.51.100.1": false, "2001:0:c000:0201::": false, "2002:0a00:0001::1": false, "64:ff9b::a00:1": false,
	} {
		if got := Local(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Local(%s) = %v, want %v", addr, got, want)
		}
	}
}
