package policy

import (
	"net/netip"
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
		{addr("::2"), false},
	}
	for _, tt := range tests {
		t.Run(tt.addr.String(), func(t *testing.T) {
			if got := Restricted(tt.addr); got != tt.want {
				t.Errorf("Restricted(%v) = %v, want %v", tt.addr, got, tt.want)
			}
		})
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
