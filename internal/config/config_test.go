package config

import (
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/egressd/egressd/internal/policy"
)

var (
	addrPort = netip.MustParseAddrPort
	prefix   = netip.MustParsePrefix
	cmpOpts  = []cmp.Option{
		cmpopts.EquateComparable(netip.AddrPort{}, netip.Prefix{}),
		cmpopts.EquateEmpty(),
		cmpopts.IgnoreFields(Config{}, "Hash"), // TestHash
	}
	defaultTimeouts = Timeouts{FirstBytes: 300 * time.Millisecond, ClientHello: 5 * time.Second, Connect: 5 * time.Second, Idle: 15 * time.Minute}
)

func TestLoad(t *testing.T) {
	tests := []struct {
		file string
		want *Config
	}{
		{"full.yaml", &Config{
			Listeners: []Listener{
				{Name: "transparent", Mode: ModeTransparent, Address: addrPort("0.0.0.0:15001"), SNIDestination: Verify, Line: 2},
				{Name: "sni", Mode: ModeSNI, Address: addrPort("127.0.0.1:8443"), UpstreamPort: 443, Line: 6},
			},
			Resolver: addrPort("127.0.0.1:53"),
			Timeouts: defaultTimeouts,
			Log:      Log{Format: "json", Output: "stdout"},
			Policy: Policy{
				Enforce: true,
				Default: policy.Deny,
				Rules: []policy.Rule{
					{Name: "github", Action: policy.Allow, FQDN: []string{"github.com", "*.github.com"}, Ports: []policy.PortRange{{Lo: 443, Hi: 443}, {Lo: 22, Hi: 22}}},
					{
						Name: "lab-ssh", Action: policy.Allow,
						Destinations: []netip.Prefix{prefix("10.99.2.0/24")},
						Sources:      []netip.Prefix{prefix("10.99.1.0/24")},
						Ports:        []policy.PortRange{{Lo: 22, Hi: 22}, {Lo: 8000, Hi: 8999}},
					},
					{Name: "ads", Action: policy.Deny, FQDN: []string{"*.doubleclick.net"}},
				},
				RuleLines: []int{22, 26, 31},
			},
		}},
		{"flow.yaml", &Config{
			Listeners: []Listener{
				{Name: "sni", Mode: ModeSNI, Address: addrPort("127.0.0.1:9001"), UpstreamPort: 9444, Line: 3},
				{Name: "sni-tls", Mode: ModeSNI, Address: addrPort("127.0.0.1:9002"), UpstreamPort: 9443, Line: 7},
			},
			Timeouts: defaultTimeouts,
			Log:      Log{Format: "json", Output: "stdout"},
			Policy: Policy{
				Enforce: true,
				Default: policy.Deny,
				Rules: []policy.Rule{
					{Name: "bench", Action: policy.Allow, FQDN: []string{"localhost"}, Destinations: []netip.Prefix{prefix("127.0.0.0/8"), prefix("::1/128")}},
					{Name: "denied", Action: policy.Deny, FQDN: []string{"denied.example"}},
				},
				RuleLines: []int{16, 17},
			},
		}},
		{"extras.yaml", &Config{
			Listeners: []Listener{
				{Name: "tproxy", Mode: ModeTransparent, Address: addrPort("[::]:15001"), SNIDestination: Trust, TProxy: true, Line: 3},
				{Name: "sni6", Mode: ModeSNI, Address: addrPort("[::1]:8443"), UpstreamPort: 8443, Line: 8},
			},
			Resolver: addrPort("[::1]:53"),
			Mark:     0x100,
			Timeouts: Timeouts{FirstBytes: time.Second, ClientHello: 5 * time.Second, Connect: 5 * time.Second, Idle: 90 * time.Minute},
			Log:      Log{Format: "text", Output: "/var/log/egressd.log"},
			Policy: Policy{
				Enforce: false,
				Default: policy.Allow,
				Rules: []policy.Rule{
					{Name: "metadata", Action: policy.Deny, Destinations: []netip.Prefix{prefix("169.254.169.254/32"), prefix("fd00::/8")}},
					{Name: "anything-named", Action: policy.Allow, FQDN: []string{"*", "Bücher.Example."}, Ports: []policy.PortRange{{Lo: 1, Hi: 1023}, {Lo: 8443, Hi: 8443}}},
					{Name: "catch-all", Action: policy.Deny},
				},
				RuleLines: []int{21, 24, 28},
			},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", tt.file)
			tt.want.Path = path
			tt.want.ShutdownGrace = 30 * time.Second
			tt.want.Limits = DeriveLimits(noFile()) // no limits section
			got, err := Load(path)
			if err != nil {
				t.Fatalf("Load(%q) = %v", path, err)
			}
			if diff := cmp.Diff(tt.want, got, cmpOpts...); diff != "" {
				t.Errorf("Load(%q) mismatch (-want +got):\n%s", path, diff)
			}
			p, err := got.Compile()
			if err != nil {
				t.Fatalf("Compile() = %v", err)
			}
			if p.Len() != len(tt.want.Policy.Rules) {
				t.Errorf("Compile().Len() = %d, want %d", p.Len(), len(tt.want.Policy.Rules))
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join("testdata", "missing.yaml"))
	var errs Errors
	if err == nil || errors.As(err, &errs) {
		t.Errorf("Load(missing) = %v, want a read error, not Errors", err)
	}
}

func TestDefault(t *testing.T) {
	want := &Config{
		Path: "(built-in default)",
		Listeners: []Listener{
			{Name: "sni", Mode: ModeSNI, Address: addrPort("127.0.0.1:8443"), UpstreamPort: 443, Line: 13},
			{Name: "proxy", Mode: ModeExplicit, Address: addrPort("127.0.0.1:3128"), TunnelSNI: TunnelMatch, Line: 21},
		},
		Timeouts: defaultTimeouts,
		Log:      Log{Format: "json", Output: "stdout"},
		Policy:   Policy{Enforce: false, Default: policy.Deny},

		Admin:         Admin{Address: addrPort("127.0.0.1:9090"), Line: 46},
		Limits:        DeriveLimits(noFile()),
		ShutdownGrace: 30 * time.Second,
	}
	got := Default()
	if diff := cmp.Diff(want, got, cmpOpts...); diff != "" {
		t.Errorf("Default() mismatch (-want +got):\n%s", diff)
	}
	if _, err := got.Compile(); err != nil {
		t.Errorf("Default().Compile() = %v", err)
	}
}

func TestAccepted(t *testing.T) {
	// Edge cases that are fine, each with what it must mean.
	const one = "listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]\n"
	tests := []struct {
		name string
		yaml string
		get  func(*Config) any
		want any
	}{
		{"empty rules", one + "policy: {rules: []}\n",
			func(c *Config) any { return c.Policy }, Policy{Enforce: true, Default: policy.Deny}},
		{"null rules", one + "policy:\n  rules:\n",
			func(c *Config) any { return c.Policy }, Policy{Enforce: true, Default: policy.Deny}},
		{"null sections keep defaults", one + "policy:\ntimeouts:\nlog:\n",
			func(c *Config) any { return []any{c.Policy, c.Timeouts, c.Log} },
			[]any{Policy{Enforce: true, Default: policy.Deny}, defaultTimeouts, Log{Format: "json", Output: "stdout"}}},
		{"rule without match fields", one + "policy: {rules: [{name: all, action: allow}]}\n",
			func(c *Config) any { return c.Policy.Rules }, []policy.Rule{{Name: "all", Action: policy.Allow}}},
		{"mark decimal with a leading zero", one + "mark: 010\n",
			func(c *Config) any { return c.Mark }, uint32(10)},
		{"mark max", one + "mark: 0xFFFFFFFF\n",
			func(c *Config) any { return c.Mark }, uint32(1<<32 - 1)},
		{"resolver with port", one + "resolver: \"[2001:db8::53]:5353\"\n",
			func(c *Config) any { return c.Resolver }, addrPort("[2001:db8::53]:5353")},
		{"resolver bracketed alone", one + "resolver: \"[2001:db8::53]\"\n",
			func(c *Config) any { return c.Resolver }, addrPort("[2001:db8::53]:53")},
		{"aliases", one + "policy:\n  rules:\n    - {name: a, action: allow, sources: &s [10.0.0.0/8]}\n    - {name: b, action: deny, destinations: *s}\n",
			func(c *Config) any { return c.Policy.Rules[1].Destinations }, []netip.Prefix{prefix("10.0.0.0/8")}},
		{"bare addresses in rules", one + "policy: {rules: [{name: a, action: allow, sources: [192.0.2.1, \"2001:db8::1\"]}]}\n",
			func(c *Config) any { return c.Policy.Rules[0].Sources }, []netip.Prefix{prefix("192.0.2.1/32"), prefix("2001:db8::1/128")}},
		{"dns section", one + "dns:\n  address: 127.0.0.1:5353\n  upstreams: [127.0.0.1, \"[::1]:53\"]\n  filter: true\n  strip_ech: true\n  max_entries: 50\n  max_entries_per_client: 10\n",
			func(c *Config) any { return c.DNS }, DNS{Address: addrPort("127.0.0.1:5353"),
				Upstreams: []netip.AddrPort{addrPort("127.0.0.1:53"), addrPort("[::1]:53")}, Remember: 10 * time.Minute,
				Filter: true, StripECH: true, MaxEntries: 50, MaxEntriesPerClient: 10, Timeout: 2 * time.Second, RateLimit: 200,
				MaxTCPConns: 512, MaxTCPConnsPerSource: 16, Line: 3}},
		{"no dns section", one, func(c *Config) any { return c.DNS.Enabled() }, false},
		{"rule protocols", one + "policy: {rules: [{name: git, action: allow, fqdn: [git.example.test], protocols: [ssh, server-first]}]}\n",
			func(c *Config) any { return c.Policy.Rules[0].Protocols }, []string{"ssh", "server-first"}},
		{"rule ja4", one + "policy: {rules: [{name: ci, action: allow, fqdn: [api.example.test], protocols: [tls], ja4: [t13d1312h2_f57a46bbacb6_ab7e3b40a677, t13d3112h2_e8f1e7e78f70_b26ce05bbdd6]}]}\n",
			func(c *Config) any { return c.Policy.Rules[0].JA4 }, []string{"t13d1312h2_f57a46bbacb6_ab7e3b40a677", "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6"}},
		{"same port, different hosts", "listeners:\n  - {name: a, mode: sni, address: 127.0.0.1:1}\n  - {name: b, mode: sni, address: 127.0.0.2:1}\n",
			func(c *Config) any { return len(c.Listeners) }, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("ok.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse(%q) = %v", tt.yaml, err)
			}
			if diff := cmp.Diff(tt.want, tt.get(c), cmpOpts...); diff != "" {
				t.Errorf("Parse(%q) mismatch (-want +got):\n%s", tt.yaml, diff)
			}
		})
	}
}

func TestErrorFormat(t *testing.T) {
	errs := Errors{
		{File: "a.yaml", Line: 3, Msg: "first"},
		{File: "a.yaml", Msg: "no line"},
	}
	want := "a.yaml:3: first\na.yaml: no line"
	if got := errs.Error(); got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}

func TestLoadDNS(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "dns.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := DNS{Address: addrPort("10.0.0.1:53"), Upstreams: []netip.AddrPort{addrPort("127.0.0.1:53"), addrPort("[::1]:5353")},
		Remember: 10 * time.Minute, Filter: true, StripECH: true, MaxEntries: 1000, MaxEntriesPerClient: 250, Timeout: 1500 * time.Millisecond, RateLimit: 100, Line: 6,
		MaxTCPConns: 100, MaxTCPConnsPerSource: 4,
		Clients: []netip.Prefix{prefix("10.0.0.0/8"), prefix("fd00::/8")}}
	if diff := cmp.Diff(want, c.DNS, cmpOpts...); diff != "" {
		t.Errorf("DNS mismatch (-want +got):\n%s", diff)
	}
	if got := c.Policy.Rules[1].Protocols; !slices.Equal(got, []string{"tls", "http"}) {
		t.Errorf("rule web protocols = %q, want [tls http]", got)
	}
	if _, err := c.Compile(); err != nil {
		t.Errorf("Compile() = %v", err)
	}
}
