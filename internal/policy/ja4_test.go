package policy

import (
	"net/netip"
	"strings"
	"testing"
)

const (
	goJA4     = "t13d1312h2_f57a46bbacb6_ab7e3b40a677" // crypto/tls, Go 1.26, NextProtos h2
	chromeJA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1" // the JA4 specification's example
	curlJA4   = "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6"
)

// TestDecideJA4 checks that a rule with ja4 matches exactly the listed
// fingerprints, and never a connection without one.
func TestDecideJA4(t *testing.T) {
	p, err := Compile([]Rule{
		{Name: "ci-api", Action: Allow, FQDN: []string{"api.example.test"}, JA4: []string{goJA4, curlJA4}},
		{Name: "no-chrome", Action: Deny, JA4: []string{chromeJA4}},
		{Name: "web", Action: Allow, FQDN: []string{"*.web.test"}},
	}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, fqdn, ja4 string
		want            string // deciding rule, "" for the default
	}{
		{"listed Go client", "api.example.test", goJA4, "ci-api"},
		{"listed curl", "api.example.test", curlJA4, "ci-api"},
		{"other client", "api.example.test", "t13d1517h2_8daaf6152771_cb7bf5808d99", ""},
		{"no fingerprint", "api.example.test", "", ""},
		{"case matters", "api.example.test", strings.ToUpper(goJA4), ""},
		{"prefix is not enough", "api.example.test", goJA4[:10], ""},
		{"deny by fingerprint before an allow", "www.web.test", chromeJA4, "no-chrome"},
		{"others pass the deny", "www.web.test", goJA4, "web"},
		{"no fingerprint passes the deny", "www.web.test", "", "web"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Src: addr("10.0.0.1"), Dst: addr("192.0.2.1"), Port: 443, FQDN: tt.fqdn, Protocol: "tls", JA4: tt.ja4}
			if got := p.Decide(in).Rule; got != tt.want {
				t.Errorf("Decide(%+v).Rule = %q, want %q", in, got, tt.want)
			}
		})
	}
}

// TestDecideNameJA4 checks that a connection not yet resolved is resolved
// when an allow rule with destinations and its fingerprint could still
// match, and not for another fingerprint.
func TestDecideNameJA4(t *testing.T) {
	p, err := Compile([]Rule{{Name: "lab", Action: Allow, FQDN: []string{"lab.test"},
		Destinations: []netip.Prefix{prefix("192.0.2.0/24")}, JA4: []string{goJA4}}}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		ja4     string
		resolve bool
	}{{goJA4, true}, {curlJA4, false}, {"", false}} {
		if _, resolve := p.DecideName(Input{Src: addr("10.0.0.1"), FQDN: "lab.test", Protocol: "tls", JA4: tt.ja4}); resolve != tt.resolve {
			t.Errorf("DecideName(ja4 %q) resolve = %v, want %v", tt.ja4, resolve, tt.resolve)
		}
	}
}

// TestFilterJA4 checks the DNS filter, which knows no fingerprint: an
// allow with ja4 may allow, a deny with ja4 does not certainly deny.
func TestFilterJA4(t *testing.T) {
	p, err := Compile([]Rule{
		{Name: "no-chrome", Action: Deny, FQDN: []string{"api.example.test"}, JA4: []string{chromeJA4}},
		{Name: "ci-api", Action: Allow, FQDN: []string{"api.example.test"}, JA4: []string{goJA4}},
	}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := p.MayAllow(addr("10.0.0.1"), "api.example.test", netip.Addr{}); !ok {
		t.Errorf("MayAllow(api.example.test) = false, want true: ci-api may allow")
	}
	if p.DeniedByName(addr("10.0.0.1"), "api.example.test") {
		t.Errorf("DeniedByName(api.example.test) = true, want false: no-chrome denies one client only")
	}
}

func TestCompileJA4(t *testing.T) {
	_, err := Compile([]Rule{{Name: "bad", Action: Allow, JA4: []string{goJA4, "t13d1312h2_F57A46BBACB6_ab7e3b40a677"}}}, Deny)
	if err == nil || !strings.Contains(err.Error(), `rule 0 "bad"`) || !strings.Contains(err.Error(), "lowercase hex") {
		t.Errorf("Compile(upper-case hash) = %v, want an error naming the rule and the hash", err)
	}
}
