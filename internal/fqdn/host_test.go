package fqdn

import (
	"errors"
	"net/netip"
	"testing"
)

func TestParseHost(t *testing.T) {
	tests := []struct {
		in       string
		name     string
		addr     string
		odd, bad bool
	}{
		{in: "GitHub.com.", name: "github.com"},
		{in: "bücher.example", name: "xn--bcher-kva.example"},
		{in: "198.51.100.7", addr: "198.51.100.7"},
		{in: "[2001:db8::1]", addr: "2001:db8::1"},
		{in: "2001:db8::1", addr: "2001:db8::1"},
		{in: "[::ffff:169.254.169.254]", addr: "169.254.169.254"},
		{in: "127.1", odd: true},
		{in: "0x7f.0.0.1", odd: true},
		{in: "017.0.0.1", odd: true},
		{in: "2130706433", odd: true},
		{in: "0177.0.0.01", odd: true},
		{in: "fe80::1%eth0", bad: true},
		{in: "[fe80::1%eth0]", bad: true},
		{in: "[198.51.100.7]", bad: true},
		{in: "[2001:db8::1", bad: true},
		{in: "", bad: true},
		{in: "a b.example", bad: true},
		{in: "evil.com\x00.good.com", bad: true},
	}
	for _, tt := range tests {
		name, addr, err := ParseHost(tt.in)
		switch {
		case tt.odd:
			if !errors.Is(err, ErrOddAddress) {
				t.Errorf("ParseHost(%q) = %q, %v, %v; want ErrOddAddress", tt.in, name, addr, err)
			}
		case tt.bad:
			if err == nil || errors.Is(err, ErrOddAddress) {
				t.Errorf("ParseHost(%q) = %q, %v, %v; want an error", tt.in, name, addr, err)
			}
		default:
			var want netip.Addr
			if tt.addr != "" {
				want = netip.MustParseAddr(tt.addr)
			}
			if err != nil || name != tt.name || addr != want {
				t.Errorf("ParseHost(%q) = %q, %v, %v; want %q, %v", tt.in, name, addr, err, tt.name, want)
			}
		}
	}
}
