package policy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var (
	addr   = netip.MustParseAddr
	prefix = netip.MustParsePrefix
)

// testRules is the example policy of the config documentation plus rules that
// exercise each field.
var testRules = []Rule{
	{Name: "github", Action: Allow, FQDN: []string{"github.com", "*.github.com"}, Ports: []PortRange{{443, 443}, {22, 22}}},
	{Name: "lab-ssh", Action: Allow, Destinations: []netip.Prefix{prefix("10.99.2.0/24")}, Sources: []netip.Prefix{prefix("10.99.1.0/24")}, Ports: []PortRange{{22, 22}, {8000, 8999}}},
	{Name: "ads", Action: Deny, FQDN: []string{"*.doubleclick.net"}},
	{Name: "evil", Action: Deny, FQDN: []string{"*.evil.example"}},
	{Name: "any-name-8443", Action: Allow, FQDN: []string{"*"}, Ports: []PortRange{{8443, 8443}}},
	{Name: "docs", Action: Allow, Destinations: []netip.Prefix{prefix("2001:db8::/32"), prefix("::ffff:198.51.100.0/120")}},
	{Name: "api-plain-http", Action: Deny, FQDN: []string{"API.GitHub.com."}},
	{Name: "mixed", Action: Allow, FQDN: []string{"mixed.example"}, Destinations: []netip.Prefix{prefix("203.0.113.0/24")}},
}

func TestDecide(t *testing.T) {
	p, err := Compile(testRules, Deny)
	if err != nil {
		t.Fatalf("Compile = %v", err)
	}
	labSrc, labDst := addr("10.99.1.7"), addr("10.99.2.5")
	tests := []struct {
		name string
		in   Input
		want string // deciding rule, "" for the default
	}{
		{"exact name", Input{FQDN: "github.com", Port: 443}, "github"},
		{"wildcard name", Input{FQDN: "api.github.com", Port: 22}, "github"},
		{"wildcard deep name", Input{FQDN: "a.b.c.github.com", Port: 443}, "github"},
		{"wildcard not the base", Input{FQDN: "doubleclick.net", Port: 443}, ""},
		{"suffix not at a label", Input{FQDN: "evilgithub.com", Port: 443}, ""},
		{"name matches but port does not", Input{FQDN: "github.com", Port: 80}, ""},
		{"first match wins, later rule reached", Input{FQDN: "api.github.com", Port: 80}, "api-plain-http"},
		{"first match wins over any-name", Input{FQDN: "x.evil.example", Port: 8443}, "evil"},
		{"any name", Input{FQDN: "example.org", Port: 8443}, "any-name-8443"},
		{"any name needs a name", Input{Dst: addr("198.51.100.7"), Port: 8443}, "docs"},
		{"fqdn rule never matches without a name", Input{Dst: addr("192.0.2.1"), Port: 8443}, ""},
		{"deny by name", Input{FQDN: "ad.doubleclick.net", Port: 443}, "ads"},
		{"all fields", Input{Src: labSrc, Dst: labDst, Port: 22}, "lab-ssh"},
		{"all fields with a name", Input{Src: labSrc, Dst: labDst, Port: 8500, FQDN: "lab.example"}, "lab-ssh"},
		{"port range ends", Input{Src: labSrc, Dst: labDst, Port: 8999}, "lab-ssh"},
		{"port outside ranges", Input{Src: labSrc, Dst: labDst, Port: 9000}, ""},
		{"port unknown", Input{Src: labSrc, Dst: labDst}, ""},
		{"source outside", Input{Src: addr("10.99.3.7"), Dst: labDst, Port: 22}, ""},
		{"source unknown", Input{Dst: labDst, Port: 22}, ""},
		{"destination outside", Input{Src: labSrc, Dst: addr("10.99.3.5"), Port: 22}, ""},
		{"destination unknown", Input{Src: labSrc, Port: 22, FQDN: "lab.example"}, ""},
		{"mapped addresses", Input{Src: addr("::ffff:10.99.1.7"), Dst: addr("::ffff:10.99.2.5"), Port: 22}, "lab-ssh"},
		{"mapped prefix", Input{Dst: addr("198.51.100.7"), Port: 443}, "docs"},
		{"zoned address", Input{Dst: addr("2001:db8::1%eth0"), Port: 443}, "docs"},
		{"name and destination", Input{FQDN: "mixed.example", Dst: addr("203.0.113.9"), Port: 443}, "mixed"},
		{"name but wrong destination", Input{FQDN: "mixed.example", Dst: addr("192.0.2.9"), Port: 443}, ""},
		{"name but destination unknown", Input{FQDN: "mixed.example", Port: 443}, ""},
		{"not normalised", Input{FQDN: "GitHub.com", Port: 443}, ""},
		{"nothing", Input{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := p.Decide(tt.in)
			wantIndex := -1
			for i, r := range testRules {
				if r.Name == tt.want {
					wantIndex = i
				}
			}
			if got.Rule != tt.want || got.Index != wantIndex {
				t.Errorf("Decide(%+v) = rule %q (%d), want %q (%d)", tt.in, got.Rule, got.Index, tt.want, wantIndex)
			}
		})
	}
}

func TestDecision(t *testing.T) {
	p, err := Compile(testRules, Deny)
	if err != nil {
		t.Fatalf("Compile = %v", err)
	}
	tests := []struct {
		in   Input
		want Decision
	}{
		{
			Input{FQDN: "api.github.com", Port: 443},
			Decision{Action: Allow, Rule: "github", Index: 0, Reason: `matched rule "github"`, ByFQDN: true},
		},
		{
			Input{Src: addr("10.99.1.7"), Dst: addr("10.99.2.5"), Port: 22},
			Decision{Action: Allow, Rule: "lab-ssh", Index: 1, Reason: `matched rule "lab-ssh"`, Destinations: []netip.Prefix{prefix("10.99.2.0/24")}},
		},
		{
			Input{Dst: addr("198.51.100.7")},
			Decision{Action: Allow, Rule: "docs", Index: 5, Reason: `matched rule "docs"`, Destinations: []netip.Prefix{prefix("2001:db8::/32"), prefix("198.51.100.0/24")}},
		},
		{
			Input{FQDN: "ad.doubleclick.net", Port: 443},
			Decision{Action: Deny, Rule: "ads", Index: 2, Reason: `matched rule "ads"`, ByFQDN: true},
		},
		{
			Input{FQDN: "example.org", Port: 443},
			Decision{Action: Deny, Index: -1, Reason: "no rule matched: default deny"},
		},
	}
	for _, tt := range tests {
		got := p.Decide(tt.in)
		if diff := cmp.Diff(tt.want, got, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
			t.Errorf("Decide(%+v) mismatch (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestDefaultAllow(t *testing.T) {
	p, err := Compile([]Rule{{Name: "ads", Action: Deny, FQDN: []string{"*.doubleclick.net"}}}, Allow)
	if err != nil {
		t.Fatalf("Compile = %v", err)
	}
	want := Decision{Action: Allow, Index: -1, Reason: "no rule matched: default allow"}
	in := Input{FQDN: "example.org", Port: 443}
	if got := p.Decide(in); !cmp.Equal(got, want) {
		t.Errorf("Decide(%+v) = %+v, want %+v", in, got, want)
	}
}

func TestRuleWithoutFieldsMatchesEverything(t *testing.T) {
	p, err := Compile([]Rule{
		{Name: "ads", Action: Deny, FQDN: []string{"*.doubleclick.net"}},
		{Name: "rest", Action: Allow},
	}, Deny)
	if err != nil {
		t.Fatalf("Compile = %v", err)
	}
	for _, in := range []Input{{}, {FQDN: "example.org", Port: 443}, {Dst: addr("192.0.2.1"), Port: 25}} {
		if got := p.Decide(in); got.Rule != "rest" {
			t.Errorf("Decide(%+v) = rule %q, want %q", in, got.Rule, "rest")
		}
	}
	if got := p.Len(); got != 2 {
		t.Errorf("Len() = %d, want 2", got)
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name  string
		rules []Rule
		def   Action
		want  []string
	}{
		{"no name", []Rule{{Action: Allow}}, Deny, []string{`rule 0 "": missing name`}},
		{"duplicate name", []Rule{{Name: "a"}, {Name: "a"}}, Deny, []string{`rule 1 "a": name already used by rule 0`}},
		{"bad action", []Rule{{Name: "a", Action: 7}}, Deny, []string{`rule 0 "a": unknown action(7)`}},
		{"bad default", nil, 9, []string{"default action: unknown action(9)"}},
		{"bad pattern", []Rule{{Name: "a", FQDN: []string{"ok.example", "a.*.com"}}}, Deny, []string{`rule 0 "a": fqdn pattern "a.*.com"`}},
		{"port zero", []Rule{{Name: "a", Ports: []PortRange{{0, 10}}}}, Deny, []string{"bad port range 0-10"}},
		{"port range reversed", []Rule{{Name: "a", Ports: []PortRange{{9000, 8000}}}}, Deny, []string{"bad port range 9000-8000"}},
		{"bad prefix", []Rule{{Name: "a", Sources: []netip.Prefix{{}}}}, Deny, []string{`rule 0 "a": sources: invalid prefix invalid Prefix`}},
		{
			"every problem", []Rule{{Name: "a", FQDN: []string{"*x"}}, {Name: "b", Ports: []PortRange{{2, 1}}}}, Deny,
			[]string{`rule 0 "a": fqdn pattern "*x"`, `rule 1 "b": bad port range 2-1`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.rules, tt.def)
			if err == nil {
				t.Fatalf("Compile(%+v) = %v, nil, want an error", tt.rules, p)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Compile(%+v) error = %q, want it to contain %q", tt.rules, err, w)
				}
			}
		})
	}
}

func TestCompileCopiesRules(t *testing.T) {
	rules := []Rule{{Name: "a", Action: Allow, Destinations: []netip.Prefix{prefix("192.0.2.0/24")}, Ports: []PortRange{{443, 443}}}}
	p, err := Compile(rules, Deny)
	if err != nil {
		t.Fatalf("Compile = %v", err)
	}
	rules[0].Destinations[0] = prefix("0.0.0.0/0")
	rules[0].Ports[0] = PortRange{1, 65535}
	in := Input{Dst: addr("198.51.100.7"), Port: 443}
	if got := p.Decide(in); got.Rule != "" {
		t.Errorf("Decide(%+v) after editing the rules = rule %q, want the default", in, got.Rule)
	}
}

func TestActionString(t *testing.T) {
	for a, want := range map[Action]string{Deny: "deny", Allow: "allow", 5: "action(5)"} {
		if got := a.String(); got != want {
			t.Errorf("Action(%d).String() = %q, want %q", uint8(a), got, want)
		}
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	p, err := Compile(testRules, Deny)
	if err != nil {
		t.Fatalf("Compile = %v", err)
	}
	for _, in := range []Input{
		{FQDN: "a.b.c.github.com", Port: 443},
		{FQDN: "nothing.example.org", Port: 443},
		{Src: addr("10.99.1.7"), Dst: addr("::ffff:10.99.2.5"), Port: 22},
		{Dst: addr("2001:db8::1%eth0"), Port: 443},
	} {
		if n := testing.AllocsPerRun(100, func() { p.Decide(in) }); n != 0 {
			t.Errorf("Decide(%+v) allocates %v times, want 0", in, n)
		}
	}
}

// TestInPrefixes checks how a peer's address, as a socket reports it, is
// matched against a setting's CIDRs (proxy_protocol_from, dns.clients):
// unmapped, and without its link-local zone.
func TestInPrefixes(t *testing.T) {
	from := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("fe80::/10")}
	for _, tt := range []struct {
		peer string
		want bool
	}{
		{"10.0.0.7", true},
		{"::ffff:10.0.0.7", true}, // an IPv4 peer of a dual-stack listener
		{"fe80::1%eth0", true},    // a link-local peer comes with its zone
		{"10.0.1.7", false},
		{"2001:db8::1", false},
	} {
		if got := InPrefixes(from, netip.MustParseAddr(tt.peer)); got != tt.want {
			t.Errorf("InPrefixes(%s) = %v, want %v", tt.peer, got, tt.want)
		}
	}
}
