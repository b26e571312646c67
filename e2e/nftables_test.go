package e2e

import "testing"

// TestNftables intercepts with nftables instead of iptables: redirect and
// tproxy statements in a table of the test's own.
func TestNftables(t *testing.T) {
	t.Run("redirect", func(t *testing.T) {
		w := newWorld(t, worldOptions{intercept: nftRedirect})
		t.Run("openssl allowed", func(t *testing.T) { testOpenSSLAllowed(t, w, "transparent") })
		t.Run("openssl denied", func(t *testing.T) { testOpenSSLDenied(t, w, "transparent") })
	})
	t.Run("tproxy", func(t *testing.T) {
		w := newWorld(t, worldOptions{intercept: nftTProxy})
		t.Run("openssl allowed", func(t *testing.T) { testOpenSSLAllowed(t, w, "tproxy") })
		t.Run("openssl denied", func(t *testing.T) { testOpenSSLDenied(t, w, "tproxy") })
	})
}
