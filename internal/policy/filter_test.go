package policy

import (
	"net/netip"
	"testing"
)

func TestMayAllow(t *testing.T) {
	rules := []Rule{
		{Name: "ads", Action: Deny, FQDN: []string{"*.ads.test"}},
		{Name: "git", Action: Allow, FQDN: []string{"git.example.test"}, Ports: []PortRange{{22, 22}}, Protocols: []string{"ssh"}},
		{Name: "lab-only", Action: Allow, FQDN: []string{"lab.example.test"}, Sources: []netip.Prefix{prefix("10.1.0.0/16")}},
		{Name: "no-smtp", Action: Deny, FQDN: []string{"mail.example.test"}, Ports: []PortRange{{25, 25}}},
		{Name: "mail", Action: Allow, FQDN: []string{"mail.example.test"}},
		{Name: "by-addr", Action: Allow, Destinations: []netip.Prefix{prefix("192.0.2.0/24")}},
	}
	p, err := Compile(rules, Deny)
	if err != nil {
		t.Fatal(err)
	}
	none := netip.Addr{}
	tests := []struct {
		src           string
		name          string
		dst           netip.Addr
		ok, byAddress bool
	}{
		{"10.0.0.1", "git.example.test", none, true, false},
		{"10.0.0.1", "x.ads.test", none, false, false},              // deny certainly matches first
		{"10.0.0.1", "x.ads.test", addr("192.0.2.1"), false, false}, // even where by-addr would allow
		{"10.1.2.3", "lab.example.test", none, true, false},
		{"10.0.0.1", "lab.example.test", none, false, true},  // only by-addr could allow it
		{"10.0.0.1", "mail.example.test", none, true, false}, // no-smtp denies port 25 only
		{"10.0.0.1", "other.test", none, false, true},
		{"10.0.0.1", "other.test", addr("192.0.2.7"), true, false},
		{"10.0.0.1", "other.test", addr("198.51.100.7"), false, false},
	}
	for _, tt := range tests {
		ok, byAddr := p.MayAllow(addr(tt.src), tt.name, tt.dst)
		if ok != tt.ok || byAddr != tt.byAddress {
			t.Errorf("MayAllow(%s, %q, %v) = %v, %v; want %v, %v", tt.src, tt.name, tt.dst, ok, byAddr, tt.ok, tt.byAddress)
		}
	}
	pa, err := Compile([]Rule{{Name: "ads", Action: Deny, FQDN: []string{"*.ads.test"}}}, Allow)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := pa.MayAllow(addr("10.0.0.1"), "x.test", none); !ok {
		t.Errorf("default allow: MayAllow(x.test) = false, want true")
	}
}

func TestDecideProtocols(t *testing.T) {
	p, err := Compile([]Rule{{Name: "git", Action: Allow, FQDN: []string{"git.example.test"}, Protocols: []string{"ssh", "server-first"}}}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		proto string
		want  Action
	}{{"ssh", Allow}, {"server-first", Allow}, {"tls", Deny}, {"", Deny}, {"bogus", Deny}} {
		in := Input{FQDN: "git.example.test", Port: 22, Protocol: tt.proto}
		if got := p.Decide(in); got.Action != tt.want {
			t.Errorf("Decide(%+v) = %v, want %v", in, got.Action, tt.want)
		}
	}
	if _, err := Compile([]Rule{{Name: "x", Action: Allow, Protocols: []string{"smtp"}}}, Deny); err == nil {
		t.Errorf("Compile with protocol smtp: no error, want one")
	}
}

// TestMayAllowUsers: a rule for proxy users neither allows nor blocks a
// name for the DNS filter, which answers for connections without a user.
func TestMayAllowUsers(t *testing.T) {
	p, err := Compile([]Rule{
		{Name: "ci-deny", Action: Deny, FQDN: []string{"a.test"}, Users: []string{"ci"}},
		{Name: "ci-allow", Action: Allow, FQDN: []string{"b.test"}, Users: []string{"ci"}},
		{Name: "all-a", Action: Allow, FQDN: []string{"a.test"}},
	}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddr("10.0.0.1")
	if ok, _ := p.MayAllow(src, "a.test", netip.Addr{}); !ok {
		t.Error("a.test: a deny for user ci blocked the allow for everyone")
	}
	if ok, _ := p.MayAllow(src, "b.test", netip.Addr{}); ok {
		t.Error("b.test: an allow for user ci allowed a lookup with no user")
	}
}

func TestDeniedByName(t *testing.T) {
	p, err := Compile([]Rule{
		{Name: "lab", Action: Allow, FQDN: []string{"*.ads.test"}, Sources: []netip.Prefix{prefix("10.1.0.0/16")}},
		{Name: "ads", Action: Deny, FQDN: []string{"*.ads.test"}},
		{Name: "ssh-only", Action: Deny, FQDN: []string{"*.ports.test"}, Ports: []PortRange{{22, 22}}},
		{Name: "ex", Action: Allow, FQDN: []string{"*.example.test"}},
		{Name: "rest", Action: Deny},
	}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src, name string
		want      bool
	}{
		{"10.2.0.1", "x.ads.test", true},
		{"10.1.0.1", "x.ads.test", false},    // an allow for this source comes first
		{"10.2.0.1", "a.ports.test", false},  // denied on one port only
		{"10.2.0.1", "edge.cdn.test", false}, // only the catch-all: not named
		{"10.2.0.1", "www.example.test", false},
	} {
		if got := p.DeniedByName(netip.MustParseAddr(tc.src), tc.name); got != tc.want {
			t.Errorf("DeniedByName(%s, %s) = %v, want %v", tc.src, tc.name, got, tc.want)
		}
	}
}
