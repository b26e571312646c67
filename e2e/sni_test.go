package e2e

import (
	"strings"
	"testing"
)

// TestSNIListener connects to the sni listener, which takes the destination
// from the SNI: resolved through egressd's resolver, port upstream_port.
func TestSNIListener(t *testing.T) {
	w := newWorld(t, worldOptions{intercept: sniOnly, ipv6: true})

	t.Run("allowed", func(t *testing.T) {
		from := w.log.mark()
		out, err := sClient(t, w, "", "-connect", sniListenAddr, "-servername", "allowed.test")
		if wantOut := "hello sni=allowed.test local=" + srvAddr + ":443"; !strings.Contains(out, wantOut) {
			t.Errorf("openssl s_client -connect %s -servername allowed.test: output lacks %q (exit %v):\n%s", sniListenAddr, wantOut, err, out)
		}
		w.log.expect(t, from, "sni listener", byListener("sni"), want{
			listener: "sni", dst: srvAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
			rule: rule("allowed"), action: "allow", bytes: 1,
		})
	})

	// openssl's one key share is for X448, which Go's server does not
	// take: it asks for a second hello with P-256, which egressd's watch
	// reads (the same name) and lets through.
	t.Run("HelloRetryRequest", func(t *testing.T) {
		from, ev := w.log.mark(), w.tls.mark()
		out, err := sClient(t, w, "", "-connect", sniListenAddr, "-servername", "allowed.test", "-groups", "X448:P-256")
		if wantOut := "hello sni=allowed.test"; !strings.Contains(out, wantOut) {
			t.Errorf("openssl s_client -groups X448:P-256: output lacks %q (exit %v):\n%s", wantOut, err, out)
		}
		if got := w.tls.next(t, ev); !got.HRR {
			t.Errorf("the server asked for no second hello (%+v): the case proves nothing", got)
		}
		w.log.expect(t, from, "HelloRetryRequest", byListener("sni"), want{
			listener: "sni", dst: srvAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
			rule: rule("allowed"), action: "allow", bytes: 1,
		})
	})

	// A name whose first answer never answers: the dial times out there
	// within its share of the connect timeout, and the second answer
	// serves the client.
	t.Run("silent first answer", func(t *testing.T) {
		requireTools(t, "iptables")
		w.srv.ip(t, "addr", "add", silentAddr+"/24", "dev", "eth0")
		w.srv.exec(t, "iptables", "-A", "INPUT", "-d", silentAddr, "-j", "DROP")
		from := w.log.mark()
		out, err := sClient(t, w, "", "-connect", sniListenAddr, "-servername", "silent.allowed.test")
		if wantOut := "hello sni=silent.allowed.test local=" + srvAddr + ":443"; !strings.Contains(out, wantOut) {
			t.Errorf("openssl s_client -servername silent.allowed.test: output lacks %q (exit %v):\n%s", wantOut, err, out)
		}
		w.log.expect(t, from, "silent first answer", byListener("sni"), want{
			listener: "sni", dst: srvAddr + ":443", fqdn: "silent.allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
			rule: rule("allowed"), action: "allow", bytes: 1,
			reasonHas: silentAddr + ":443 failed (i/o timeout), trying the next answer " + srvAddr + ":443",
		})
	})

	// A name on the allow list that resolves (even in part) to a restricted
	// address must not open it.
	for _, name := range []string{"private.allowed.test", "mixed.allowed.test"} {
		t.Run(name, func(t *testing.T) {
			from, accepts := w.log.mark(), w.tls.accepts.Load()
			out, err := sClient(t, w, "", "-connect", sniListenAddr, "-servername", name)
			if err == nil || !strings.Contains(out, "alert access denied") {
				t.Errorf("openssl s_client -servername %s: want an access denied alert, got exit %v:\n%s", name, err, out)
			}
			w.log.expect(t, from, name, byListener("sni"), want{
				listener: "sni", fqdn: name, fqdnSource: "sni", protocol: []string{"tls"},
				action: "deny", reasonHas: "restricted",
			})
			if n := w.tls.accepts.Load() - accepts; n != 0 {
				t.Errorf("a server accepted %d connections, want 0", n)
			}
		})
	}
}
