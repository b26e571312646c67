package e2e

import (
	"strings"
	"testing"
)

// TestTProxy runs the shared cases through iptables TPROXY to the tproxy
// listener (IP_TRANSPARENT; the original destination is the socket's local
// address). That listener uses sni_destination: resolve, so a spoofed SNI
// reaches the name's real address, not the one the client asked for.
func TestTProxy(t *testing.T) {
	w := newWorld(t, worldOptions{intercept: tproxy, ipv6: true})
	t.Run("openssl allowed", func(t *testing.T) { testOpenSSLAllowed(t, w, "tproxy") })
	t.Run("openssl denied", func(t *testing.T) { testOpenSSLDenied(t, w, "tproxy") })
	t.Run("ssh", func(t *testing.T) { testSSH(t, w, "tproxy") })
	t.Run("resolve", func(t *testing.T) { testResolve(t, w) })
	t.Run("multipath client", func(t *testing.T) { testMultipathClient(t, w, "tproxy") })
}

// testResolve: under sni_destination: resolve, a client that sends
// allowed.test to the attacker's address is connected to allowed.test's
// resolved address instead.
func testResolve(t *testing.T, w *world) {
	from := w.log.mark()
	c, err := w.cli.dial("", attackerAddr+":443")
	if err != nil {
		t.Fatal(err)
	}
	src := c.LocalAddr().String()
	_, greeting, err := greet(c, w.tlsConfig("allowed.test"))
	if wantGreet := "hello sni=allowed.test local=" + srvAddr + ":443"; err != nil || !strings.HasPrefix(greeting, wantGreet) {
		t.Errorf("resolve listener: handshake %v, greeting %q, want %q", err, greeting, wantGreet)
	}
	w.log.expect(t, from, "resolved SNI", bySrc(src), want{
		listener: "tproxy", dst: srvAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
		rule: rule("allowed"), action: "allow", bytes: 1,
	})
}
