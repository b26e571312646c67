package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProxyProtocol puts HAProxy, as an L4 load balancer, in front of the
// sni-pp listener (proxy_protocol: true) and checks that egressd logs (and
// decides with) the client behind it, not the balancer; with PROXY v1 and
// v2, from HAProxy and from curl --haproxy-protocol. A client that sends no
// header is reset.
func TestProxyProtocol(t *testing.T) {
	w := newWorld(t, worldOptions{intercept: sniOnly})
	requireTools(t, "haproxy", "curl")
	const (
		lbV1 = gwCliAddr + ":8445"
		lbV2 = gwCliAddr + ":8446"
	)
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	// The balancer connects to egressd from gw's own address, so a source
	// of cliAddr in the log can only have come from the header.
	err := os.WriteFile(cfg, []byte(`global
  maxconn 100
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend v1
  bind `+lbV1+`
  default_backend egressd_v1
backend egressd_v1
  server egressd `+ppListenAddr+` send-proxy source `+gwCliAddr+`
frontend v2
  bind `+lbV2+`
  default_backend egressd_v2
backend egressd_v2
  server egressd `+ppListenAddr+` send-proxy-v2 source `+gwCliAddr+`
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	lb := startProcess(t, "haproxy", w.gw.command(context.Background(), "haproxy", "-db", "-f", cfg), nil, nil)
	w.gw.waitListening(t, lbV1, lb)
	w.gw.waitListening(t, lbV2, lb)
	// waitListening's probes reached egressd through the balancer as
	// connections without a client; let their lines pass.
	fromClient := func(l accessLine) bool { return l.Listener == "sni-pp" && strings.HasPrefix(l.Src, cliAddr+":") }

	for _, lbAddr := range []string{lbV1, lbV2} {
		t.Run("haproxy "+lbAddr, func(t *testing.T) {
			from := w.log.mark()
			out, err := sClient(t, w, "", "-connect", lbAddr, "-servername", "allowed.test")
			if wantOut := "hello sni=allowed.test"; !strings.Contains(out, wantOut) {
				t.Errorf("openssl s_client via haproxy %s: output lacks %q (exit %v):\n%s", lbAddr, wantOut, err, out)
			}
			w.log.expect(t, from, "client behind haproxy", fromClient, want{
				listener: "sni-pp", dst: srvAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni",
				protocol: []string{"tls"}, rule: rule("allowed"), action: "allow", bytes: 1,
			})
		})
	}

	t.Run("curl --haproxy-protocol", func(t *testing.T) {
		from := w.log.mark()
		out, err := clientCommand(t, w.cli, "", "curl", "-sS", "--max-time", "10", "--haproxy-protocol", "--no-alpn", "--http0.9",
			"--cacert", credentials.certFile, "--connect-to", "allowed.test:443:"+ppListenAddr, "https://allowed.test/")
		if !strings.Contains(out, "hello sni=allowed.test") {
			t.Errorf("curl --haproxy-protocol: exit %v, output %q", err, out)
		}
		w.log.expect(t, from, "curl", fromClient, want{listener: "sni-pp", fqdn: "allowed.test", action: "allow", rule: rule("allowed")})
	})

	t.Run("no header", func(t *testing.T) {
		from := w.log.mark()
		out, err := sClient(t, w, "", "-connect", ppListenAddr, "-servername", "allowed.test")
		if err == nil || strings.Contains(out, "hello sni=") {
			t.Errorf("openssl s_client without a PROXY header: exit %v, want a failure:\n%s", err, out)
		}
		w.log.expect(t, from, "header-less client", fromClient, want{
			listener: "sni-pp", action: "deny", reasonHas: "PROXY protocol expected",
		})
	})
}
