package e2e

import "testing"

// TestDirect runs the cases that do not depend on a denial without egressd:
// cli reaches the servers through gw's plain routing. It checks the harness
// itself (servers, clients, record framing); if it fails, the other tests'
// failures say nothing about egressd.
func TestDirect(t *testing.T) {
	w := newWorld(t, worldOptions{intercept: direct})
	t.Run("openssl allowed", func(t *testing.T) { testOpenSSLAllowed(t, w, "") })
	t.Run("fragmented hello", func(t *testing.T) { testFragmentedHello(t, w) })
	t.Run("bulk half-close", func(t *testing.T) { testBulk(t, w) })
	t.Run("ssh", func(t *testing.T) { testSSH(t, w, "") })
	t.Run("server-first", func(t *testing.T) { testServerFirst(t, w) })
}
