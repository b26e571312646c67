package suggest

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/policy"
)

// line writes one conn line as egressd writes it.
func line(src, dst, name string, source accesslog.NameSource, proto, user string) string {
	rec := &accesslog.Record{Start: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC), Listener: "t", User: user,
		Src: netip.MustParseAddrPort(src), FQDN: name, FQDNSource: source, Protocol: proto,
		Action: accesslog.Deny, Reason: "no rule matched: default deny", BytesUp: 10, BytesDown: 20}
	if dst != "" {
		rec.Dst = netip.MustParseAddrPort(dst)
	}
	var b bytes.Buffer
	accesslog.New(&b, "json").Log(rec)
	return b.String()
}

// TestDefaultReason: Decided recognises the policy's own words for a
// decision no rule made.
func TestDefaultReason(t *testing.T) {
	for _, def := range []policy.Action{policy.Deny, policy.Allow} {
		p, err := policy.Compile(nil, def)
		if err != nil {
			t.Fatal(err)
		}
		if r := p.Decide(policy.Input{}).Reason; !strings.HasPrefix(r, defaultReason) {
			t.Errorf("policy's default reason %q does not start with %q", r, defaultReason)
		}
	}
}

func TestRead(t *testing.T) {
	conn := line("10.0.0.1:1000", "198.51.100.1:443", "a.example.com", accesslog.FromSNI, "tls", "")
	var dns bytes.Buffer
	accesslog.New(&dns, "json").LogDNS(&accesslog.DNSRecord{Src: netip.MustParseAddrPort("10.0.0.1:53"), QName: "x.test", QType: "A"})
	long := `{"msg":"conn","reason":"` + strings.Repeat("x", maxLine) + `"}` + "\n"
	text := conn + dns.String() + "not json\n\n" + `{"msg":"conn","src":"nonsense"}` + "\n" + long + conn + `{"msg":"conn"` // cut off at the end
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(text))
	zw.Close()
	for name, in := range map[string][]byte{"plain": []byte(text), "gzip": gz.Bytes()} {
		t.Run(name, func(t *testing.T) {
			var got []*Conn
			st, err := Read(bytes.NewReader(in), func(c *Conn) { got = append(got, c) })
			if err != nil {
				t.Fatal(err)
			}
			if want := (ReadStats{Conns: 2, DNS: 1, Garbage: 4}); st != want {
				t.Errorf("Read stats = %+v, want %+v", st, want)
			}
			if len(got) != 2 || got[0].FQDN != "a.example.com" || got[0].Dst.Port() != 443 || got[0].Src.Addr() != netip.MustParseAddr("10.0.0.1") {
				t.Errorf("Read conns = %+v", got)
			}
		})
	}
}

func TestCollapse(t *testing.T) {
	tests := []struct {
		names []string
		n     int
		want  map[string]string
	}{
		{[]string{"a.example.com", "b.example.com", "c.x.example.com", "example.com"}, 3,
			map[string]string{"a.example.com": "*.example.com", "b.example.com": "*.example.com", "c.x.example.com": "*.example.com", "example.com": "example.com"}},
		{[]string{"a.example.com", "b.example.com"}, 3,
			map[string]string{"a.example.com": "a.example.com", "b.example.com": "b.example.com"}},
		// Never *.com, never *.co.uk: each is its own registrable domain.
		{[]string{"a.com", "b.com", "c.com"}, 2, map[string]string{"a.com": "a.com", "b.com": "b.com", "c.com": "c.com"}},
		{[]string{"a.co.uk", "b.co.uk", "c.co.uk"}, 2, map[string]string{"a.co.uk": "a.co.uk", "b.co.uk": "b.co.uk", "c.co.uk": "c.co.uk"}},
		{[]string{"x.a.co.uk", "y.a.co.uk"}, 2, map[string]string{"x.a.co.uk": "*.a.co.uk", "y.a.co.uk": "*.a.co.uk"}},
		// The list's private section: github.io's names are its users'.
		{[]string{"a.github.io", "b.github.io", "c.github.io"}, 2,
			map[string]string{"a.github.io": "a.github.io", "b.github.io": "b.github.io", "c.github.io": "c.github.io"}},
		{[]string{"com", "co.uk"}, 1, map[string]string{"com": "com", "co.uk": "co.uk"}},
		// IDNs are punycode by then.
		{[]string{"a.xn--bcher-kva.example", "b.xn--bcher-kva.example"}, 2,
			map[string]string{"a.xn--bcher-kva.example": "*.xn--bcher-kva.example", "b.xn--bcher-kva.example": "*.xn--bcher-kva.example"}},
		{[]string{"a.example.com", "b.example.com"}, 0, map[string]string{"a.example.com": "a.example.com", "b.example.com": "b.example.com"}},
	}
	for _, tt := range tests {
		if got := collapse(tt.names, tt.n); !cmp.Equal(got, tt.want) {
			t.Errorf("collapse(%q, %d) = %v, want %v", tt.names, tt.n, got, tt.want)
		}
	}
}

func TestCovering(t *testing.T) {
	tests := []struct {
		addrs []string
		want  []string
	}{
		{[]string{"10.0.1.5"}, []string{"10.0.1.5/32"}},
		{[]string{"10.0.1.5", "10.0.1.9"}, []string{"10.0.1.0/28"}},
		{[]string{"10.0.1.0", "10.0.1.255"}, []string{"10.0.1.0/24"}},
		{[]string{"10.0.1.5", "10.0.2.5"}, []string{"10.0.1.5/32", "10.0.2.5/32"}},
		{[]string{"10.0.1.5", "2001:db8::1", "2001:db8::3"}, []string{"10.0.1.5/32", "2001:db8::/126"}},
		{[]string{"2001:db8::1", "2001:db8:0:1::1"}, []string{"2001:db8::1/128", "2001:db8:0:1::1/128"}},
	}
	for _, tt := range tests {
		var addrs []netip.Addr
		for _, s := range tt.addrs {
			addrs = append(addrs, netip.MustParseAddr(s))
		}
		var got []string
		for _, p := range Covering(addrs) {
			got = append(got, p.String())
		}
		if !cmp.Equal(got, tt.want) {
			t.Errorf("Covering(%v) = %v, want %v", tt.addrs, got, tt.want)
		}
	}
}

// TestRules: what a log makes, rule by rule.
func TestRules(t *testing.T) {
	log := line("10.0.1.5:1", "198.51.100.1:443", "a.example.com", accesslog.FromSNI, "tls", "") +
		line("10.0.1.9:1", "198.51.100.1:443", "b.example.com", accesslog.FromSNI, "tls", "") +
		line("10.0.1.9:1", "198.51.100.1:443", "c.example.com", accesslog.FromSNI, "tls", "") +
		line("10.0.1.9:1", "198.51.100.1:443", "example.com", accesslog.FromSNI, "tls", "") +
		line("10.0.1.5:1", "198.51.100.1:443", "example.com", accesslog.FromSNI, "tls", "") +
		line("10.0.1.5:1", "198.51.100.2:22", "git.example.org", accesslog.FromDNS, "ssh", "") +
		line("10.0.1.5:1", "198.51.100.3:25", "", accesslog.FromNone, "server-first", "") +
		line("10.0.1.5:1", "198.51.100.3:587", "", accesslog.FromNone, "server-first", "") +
		line("10.0.1.5:1", "10.9.9.9:5432", "", accesslog.FromNone, "server-first", "") +
		line("10.0.2.7:1", "198.51.100.4:443", "api.test", accesslog.FromConnect, "tls", "alice") +
		line("10.0.2.7:1", "198.51.100.4:443", "api.test", accesslog.FromConnect, "tls", "mallory")
	b := NewBuilder(Options{Collapse: 3, Users: []string{"alice"}})
	if _, err := Read(strings.NewReader(log), b.Add); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range b.Rules() {
		got = append(got, fmt.Sprintf("%s users=%v sources=%v fqdn=%v dst=%v ports=%v protocols=%v conns=%d",
			r.Name, r.Users, r.Sources, r.FQDN, r.Destinations, r.Ports, r.Protocols, r.Conns))
	}
	want := []string{
		"allow-api.test users=[alice] sources=[] fqdn=[api.test] dst=[] ports=[{443 443}] protocols=[] conns=1",
		"allow-example.com-and-1-more users=[] sources=[10.0.1.0/28] fqdn=[example.com *.example.com] dst=[] ports=[{443 443}] protocols=[] conns=5",
		"allow-git.example.org users=[] sources=[10.0.1.5/32] fqdn=[git.example.org] dst=[] ports=[{22 22}] protocols=[ssh] conns=1",
		"allow-198.51.100.3 users=[] sources=[10.0.1.5/32] fqdn=[] dst=[198.51.100.3/32] ports=[{25 25} {587 587}] protocols=[server-first] conns=2",
		"allow-api.test-2 users=[] sources=[10.0.2.7/32] fqdn=[api.test] dst=[] ports=[{443 443}] protocols=[] conns=1",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Rules() (-want +got):\n%s", diff)
	}
	if l := b.Left(); l.Restricted != 1 || l.OtherUsers != 1 || l.RestrictedDst[0] != "10.9.9.9:5432" {
		t.Errorf("Left() = %+v, want 1 restricted (10.9.9.9:5432), 1 other user", l)
	}
}

func TestPortRanges(t *testing.T) {
	ports := map[uint16]bool{80: true, 443: true, 444: true, 8000: true, 8001: true, 8002: true, 8003: true}
	want := []policy.PortRange{{Lo: 80, Hi: 80}, {Lo: 443, Hi: 443}, {Lo: 444, Hi: 444}, {Lo: 8000, Hi: 8003}}
	if got := portRanges(ports); !cmp.Equal(got, want) {
		t.Errorf("portRanges = %v, want %v", got, want)
	}
	if got := portRanges(map[uint16]bool{0: true, 443: true}); got != nil {
		t.Errorf("portRanges with an unknown port = %v, want nil (any port)", got)
	}
}

const current = `# the operator's own file
listeners:
  - name: t            # a comment that stays
    mode: transparent
    address: "0.0.0.0:15001"
users:
  - {name: alice, password_hash: "$2a$10$wrkWBbJZHf2nawI5VYSiUexsNfVxbqWcjq5.WjoMQkPuJu87fGZ5C"}
policy:
  enforce: true
  rules:
    - {name: old, action: deny, fqdn: [x.test]}

# the admin endpoint, on loopback
admin:
  address: 127.0.0.1:9090
`

func TestReplacePolicy(t *testing.T) {
	section := []byte("policy:\n  enforce: true\n  default: deny\n  rules: []\n")
	tests := []struct {
		name, current string
		keep          []string
	}{
		{"middle", current, []string{"# the operator's own file", "# a comment that stays", "# the admin endpoint, on loopback", "address: 127.0.0.1:9090"}},
		{"last", "listeners: [{name: t, mode: sni, address: \"127.0.0.1:1\"}]\npolicy:\n  rules: [{name: x, action: allow}]\n", []string{"listeners:"}},
		{"none", "listeners: [{name: t, mode: sni, address: \"127.0.0.1:1\"}]", []string{"listeners:"}},
		{"flow", "{listeners: [{name: t, mode: sni, address: \"127.0.0.1:1\"}], policy: {rules: [{name: x, action: allow}]}}", []string{"listeners:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Document("current.yaml", []byte(tt.current), section)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range append(tt.keep, "rules: []") {
				if !strings.Contains(string(out), s) {
					t.Errorf("the new file lacks %q:\n%s", s, out)
				}
			}
			cfg, err := config.Parse("out.yaml", out)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if len(cfg.Policy.Rules) != 0 || len(cfg.Listeners) != 1 {
				t.Errorf("the new file has %d rules and %d listeners, want 0 and 1:\n%s", len(cfg.Policy.Rules), len(cfg.Listeners), out)
			}
		})
	}
}

// TestDocumentUnsetSecret: a password_env variable not set where suggest
// runs is the environment's problem, not the suggestion's.
func TestDocumentUnsetSecret(t *testing.T) {
	cur := strings.Replace(current, `password_hash: "$2a$10$wrkWBbJZHf2nawI5VYSiUexsNfVxbqWcjq5.WjoMQkPuJu87fGZ5C"`,
		"password_env: EGRESSD_SUGGEST_TEST_UNSET", 1)
	if _, err := Document("current.yaml", []byte(cur), []byte("policy:\n  rules: []\n")); err != nil {
		t.Errorf("Document with an unset password_env: %v", err)
	}
	if _, err := Document("current.yaml", []byte(cur), []byte("policy:\n  rules: [{name: x, action: maybe}]\n")); err == nil {
		t.Errorf("Document with a broken policy: no error")
	}
}

func TestReplay(t *testing.T) {
	allowed := func(l string) string {
		return strings.Replace(strings.Replace(l, `"action":"deny"`, `"action":"allow"`, 1), `"rule":""`, `"rule":"old"`, 1)
	}
	log := allowed(line("10.0.1.5:1", "198.51.100.1:443", "a.example.com", accesslog.FromSNI, "tls", "")) +
		allowed(line("10.0.1.6:1", "198.51.100.1:443", "a.example.com", accesslog.FromSNI, "tls", "")) +
		line("10.0.1.5:1", "198.51.100.1:443", "b.example.com", accesslog.FromSNI, "tls", "") +
		line("10.0.1.5:1", "198.51.100.1:443", "c.example.com", accesslog.FromSNI, "tls", "")
	pol, err := policy.Compile([]policy.Rule{{Name: "b", Action: policy.Allow, FQDN: []string{"b.example.com"}}}, policy.Deny)
	if err != nil {
		t.Fatal(err)
	}
	r := NewReplayer(pol, true)
	if _, err := Read(strings.NewReader(log), r.Add); err != nil {
		t.Fatal(err)
	}
	want := []Change{
		{Denied: true, Refused: true, Destination: "a.example.com:443", Was: `allow by rule "old"`, Conns: 2, Who: []string{"10.0.1.5", "10.0.1.6"}},
		{Denied: true, Refused: true, Destination: "c.example.com:443", Was: "deny by default", Conns: 1, Who: []string{"10.0.1.5"}},
		{Destination: "b.example.com:443", Rule: "b", Was: "deny by default", Conns: 1, Who: []string{"10.0.1.5"}},
	}
	if diff := cmp.Diff(want, r.Changes()); diff != "" {
		t.Errorf("Changes() (-want +got):\n%s", diff)
	}
	var out strings.Builder
	r.Write(&out, "new.yaml")
	for _, s := range []string{"0 unchanged, 3 would now be denied, 1 would now be allowed",
		"these 3 connections would now be denied and refused", "this 1 connection would now be allowed", "a.example.com:443  from 10.0.1.5, 10.0.1.6"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("Write lacks %q:\n%s", s, out.String())
		}
	}
}
