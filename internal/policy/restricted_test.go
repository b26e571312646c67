package policy

import (
	"net/netip"
	"strings"
	"testing"
)

func TestRestricted(t *testing.T) {
	tests := []struct {
		addr netip.Addr
		want bool
	}{
		{addr("0.0.0.0"), true},
		{addr("0.1.2.3"), true},
		{addr("127.0.0.1"), true},
		{addr("127.255.255.254"), true},
		{addr("10.0.0.1"), true},
		{addr("172.16.0.1"), true},
		{addr("172.31.255.255"), true},
		{addr("192.168.1.1"), true},
		{addr("169.254.169.254"), true},
		{addr("168.63.129.16"), true}, // Azure's host endpoint
		{addr("168.63.129.17"), false},
		{addr("fec0::1"), true}, // site-local
		{addr("100.64.0.1"), true},
		{addr("100.127.255.255"), true},
		{addr("224.0.0.1"), true},
		{addr("239.255.255.250"), true},
		{addr("255.255.255.255"), true},
		{addr("::"), true},
		{addr("::1"), true},
		{addr("fc00::1"), true},
		{addr("fd12:3456::1"), true},
		{addr("fe80::1"), true},
		{addr("fe80::1%eth0"), true},
		{addr("ff02::1"), true},
		{addr("::ffff:169.254.169.254"), true},
		{addr("::ffff:127.0.0.1"), true},
		{addr("64:ff9b::a9fe:a9fe"), true}, // NAT64 of 169.254.169.254
		{addr("::2"), true},                // IPv4-compatible 0.0.0.2
		{addr("100::1"), true},             // discard-only
		{netip.Addr{}, true},

		{addr("198.51.100.7"), false},
		{addr("203.0.113.1"), false},
		{addr("8.8.8.8"), false},
		{addr("172.32.0.1"), false},
		{addr("172.15.255.255"), false},
		{addr("100.128.0.1"), false},
		{addr("11.0.0.1"), false},
		{addr("255.255.255.254"), false},
		{addr("::ffff:198.51.100.7"), false},
		{addr("64:ff9b::c633:6407"), false}, // NAT64 of 198.51.100.7
		{addr("2001:db8::1"), false},
		{addr("2606:4700::1111"), false},
		{addr("100:0:0:1::1"), false}, // just past the discard prefix
	}
	for _, tt := range tests {
		t.Run(tt.addr.String(), func(t *testing.T) {
			if got := Restricted(tt.addr); got != tt.want {
				t.Errorf("Restricted(%v) = %v, want %v", tt.addr, got, tt.want)
			}
		})
	}
}

// TestRestrictedEmbedded: every IPv6 spelling that carries an IPv4
// address is restricted when that address is, and not when it is public.
func TestRestrictedEmbedded(t *testing.T) {
	tests := []struct {
		name string
		addr string
		want bool
	}{
		{"mapped loopback", "::ffff:7f00:1", true},
		{"mapped metadata with zone", "::ffff:169.254.169.254%eth0", true},
		{"mapped public", "::ffff:c633:6407", false},
		{"compatible loopback", "::7f00:1", true},
		{"compatible metadata", "::169.254.169.254", true},
		{"compatible private", "::a00:1", true},
		{"compatible public", "::c633:6407", false},
		{"translated (SIIT) loopback", "::ffff:0:7f00:1", true},
		{"translated (SIIT) metadata", "::ffff:0:169.254.169.254", true},
		{"translated (SIIT) public", "::ffff:0:c633:6407", false},
		{"NAT64 loopback", "64:ff9b::7f00:1", true},
		{"NAT64 private", "64:ff9b::192.168.1.1", true},
		{"NAT64 metadata with zone", "64:ff9b::a9fe:a9fe%eth0", true},
		{"NAT64 public", "64:ff9b::c633:6407", false},
		{"NAT64 local-use /48 metadata", "64:ff9b:1:a9fe:a9:fe00::", true},
		{"NAT64 local-use /48 private", "64:ff9b:1:a00:0:100::", true},
		{"NAT64 local-use /48 public", "64:ff9b:1:c633:64:700::", false},
		{"NAT64 local-use /96 metadata", "64:ff9b:1:101:1:101:a9fe:a9fe", true},
		{"NAT64 local-use /96 public", "64:ff9b:1:101:1:101:c633:6407", false},
		{"NAT64 local-use, zero-filled", "64:ff9b:1::a9fe:a9fe", true},
		{"6to4 metadata", "2002:a9fe:a9fe::1", true},
		{"6to4 loopback", "2002:7f00:1::", true},
		{"6to4 public", "2002:c633:6407::1", false},
		{"Teredo server metadata", "2001:0:a9fe:a9fe::39cc:9bf7", true},
		{"Teredo client metadata", "2001:0:c633:6407::5601:5601", true},
		{"Teredo public", "2001:0:c633:6407::39cc:9bf7", false},
		{"not Teredo (ORCHIDv2)", "2001:20::a9fe:a9fe", false},
		{"ISATAP metadata", "2001:db8::5efe:a9fe:a9fe", true},
		{"ISATAP global-bit private", "2001:db8::200:5efe:a00:1", true},
		{"ISATAP public", "2001:db8::5efe:c633:6407", false},
		{"public with a zone", "2001:db8::1%eth0", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := addr(tt.addr)
			if got := Restricted(a); got != tt.want {
				t.Errorf("Restricted(%v) = %v, want %v", a, got, tt.want)
			}
		})
	}
}

// TestDestinationsAsDialled: a rule's destinations match the address as
// dialled; only the restriction looks through embeddings. So destinations
// 169.254.0.0/16 open 169.254.169.254 (and its IPv4-mapped form, which a
// socket dials as IPv4) but not its NAT64 spelling, which only a rule
// naming the IPv6 form opens.
func TestDestinationsAsDialled(t *testing.T) {
	meta := Decision{Action: Allow, Rule: "meta", Destinations: []netip.Prefix{prefix("169.254.0.0/16")}}
	nat := Decision{Action: Allow, Rule: "nat64", Destinations: []netip.Prefix{prefix("64:ff9b::/96")}}
	tests := []struct {
		d    Decision
		addr string
		want bool
	}{
		{meta, "169.254.169.254", true},
		{meta, "::ffff:169.254.169.254", true},
		{meta, "64:ff9b::a9fe:a9fe", false},
		{meta, "2002:a9fe:a9fe::1", false},
		{nat, "64:ff9b::a9fe:a9fe", true},
		{nat, "169.254.169.254", false},
	}
	for _, tt := range tests {
		if got := tt.d.Permits(addr(tt.addr)); got != tt.want {
			t.Errorf("rule %q: Permits(%s) = %v, want %v", tt.d.Rule, tt.addr, got, tt.want)
		}
	}
	// Through the policy: the rule naming 169.254.0.0/16 does not match the
	// NAT64 spelling, and the rule after it, by name alone, cannot open it.
	p, err := Compile([]Rule{
		{Name: "meta", Action: Allow, FQDN: []string{"meta.test"}, Destinations: []netip.Prefix{prefix("169.254.0.0/16")}},
		{Name: "byname", Action: Allow, FQDN: []string{"meta.test"}},
	}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	d := p.DecideDial(Input{Dst: addr("64:ff9b::a9fe:a9fe"), Port: 80, FQDN: "meta.test"})
	want := `destination 64:ff9b::a9fe:a9fe (embedding 169.254.169.254) is restricted, not covered by rule "byname" destinations`
	if d.Action != Deny || !d.Hard || !strings.Contains(d.Reason, want) {
		t.Errorf("DecideDial(64:ff9b::a9fe:a9fe) = %v hard=%v %q; want a hard deny saying %q", d.Action, d.Hard, d.Reason, want)
	}
}

func TestPermits(t *testing.T) {
	byName := Decision{Action: Allow, Rule: "github", ByFQDN: true}
	local := Decision{Action: Allow, Rule: "bench", Destinations: []netip.Prefix{prefix("127.0.0.0/8"), prefix("::1/128")}}
	denied := Decision{Action: Deny, Rule: "ads"}
	tests := []struct {
		name string
		d    Decision
		addr netip.Addr
		want bool
	}{
		{"allow public", byName, addr("198.51.100.7"), true},
		{"allow public v6", byName, addr("2001:db8::7"), true},
		{"allow but loopback", byName, addr("127.0.0.1"), false},
		{"allow but metadata", byName, addr("169.254.169.254"), false},
		{"allow but mapped metadata", byName, addr("::ffff:169.254.169.254"), false},
		{"allow but private", byName, addr("10.1.2.3"), false},
		{"allow but invalid", byName, netip.Addr{}, false},
		{"destinations cover loopback", local, addr("127.0.0.1"), true},
		{"destinations cover mapped loopback", local, addr("::ffff:127.0.0.1"), true},
		{"destinations cover v6 loopback", local, addr("::1"), true},
		{"destinations do not cover private", local, addr("10.0.0.1"), false},
		{"destinations do not limit public", local, addr("198.51.100.7"), true},
		{"deny", denied, addr("198.51.100.7"), false},
		{"default deny", Decision{Action: Deny, Index: -1}, addr("198.51.100.7"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.d.Permits(tt.addr); got != tt.want {
				t.Errorf("%+v.Permits(%v) = %v, want %v", tt.d, tt.addr, got, tt.want)
			}
		})
	}
}

// BenchmarkRestricted: the check runs for every answer of every connection;
// an address outside the embedding prefixes must cost what it did before
// they were looked through, and none may allocate.
func BenchmarkRestricted(b *testing.B) {
	for _, s := range []string{"198.51.100.7", "2606:4700::1111", "64:ff9b::c633:6407", "2001:0:c633:6407::39cc:9bf7"} {
		a := addr(s)
		b.Run(s, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if Restricted(a) {
					b.Fatalf("Restricted(%v) = true", a)
				}
			}
		})
	}
}
