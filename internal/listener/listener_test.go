package listener

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// TestOwnFamilyOnly: a listener on 0.0.0.0 answers IPv4 only and one on
// [::] IPv6 only. Go's plain "tcp" would bind 0.0.0.0 as a dual-stack [::],
// reachable over IPv6 past a firewall written for IPv4.
func TestOwnFamilyOnly(t *testing.T) {
	for _, tc := range []struct {
		bind, reach, miss string
	}{
		{"0.0.0.0:0", "127.0.0.1", "::1"},
		{"[::]:0", "::1", "127.0.0.1"},
	} {
		ln, err := Listen(context.Background(), netip.MustParseAddrPort(tc.bind), Options{})
		if err != nil && tc.bind == "[::]:0" {
			t.Skipf("no IPv6 here: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		port := strconv.Itoa(int(AddrPort(ln.Addr()).Port()))
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(tc.reach, port), 5*time.Second); err != nil {
			t.Errorf("listener on %s: dial %s: %v", tc.bind, tc.reach, err)
		} else {
			c.Close()
		}
		// Accept what reached the listener so far (the dial above), then
		// see whether a dial over the other family reaches it too. A dial
		// that connects may have reached another test's listener on the
		// same port number of the other family: only an accept here fails.
		ln.SetDeadline(time.Now().Add(time.Second))
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(tc.miss, port), 5*time.Second); err == nil {
			c.Close()
			ln.SetDeadline(time.Now().Add(500 * time.Millisecond))
			if a, err := ln.Accept(); err == nil {
				a.Close()
				t.Errorf("listener on %s answers on %s too", tc.bind, tc.miss)
			}
		}
		ln.Close()
	}
}
