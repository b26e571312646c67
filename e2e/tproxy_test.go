package e2e

import "testing"

// TestTProxy runs the shared cases through iptables TPROXY to the tproxy
// listener (IP_TRANSPARENT; the original destination is the socket's local
// address).
func TestTProxy(t *testing.T) {
	w := newWorld(t, worldOptions{intercept: tproxy})
	t.Run("openssl allowed", func(t *testing.T) { testOpenSSLAllowed(t, w, "tproxy") })
	t.Run("openssl denied", func(t *testing.T) { testOpenSSLDenied(t, w, "tproxy") })
	t.Run("ssh", func(t *testing.T) { testSSH(t, w, "tproxy") })
}
