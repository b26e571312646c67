package e2e

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// TestSystemResolverAbsoluteNames: with no `resolver:`, egressd asks the
// system's resolver, and a relative name goes through resolv.conf's
// search domains first when it has fewer dots than ndots (5 in Kubernetes
// pods). Whoever controls a search domain (in a cluster, anyone who may
// create a Service) could then answer for an allowed name. Here gw's
// resolv.conf searches evil.test with ndots:5, and its nameserver answers
// allowed.test.evil.test with the attacker's address: egressd must still
// dial allowed.test's own.
func TestSystemResolverAbsoluteNames(t *testing.T) {
	top := newTopology(t)
	cert, _ := serverCert(t)
	startTLSServer(t, top.srv, cert, "0.0.0.0:443")
	records := map[string][]string{"allowed.test": {srvAddr}, "allowed.test.evil.test": {attackerAddr}}
	if err := top.gw.do(func() error { testnet.DNSAt(t, "127.0.0.1:53", records); return nil }); err != nil {
		t.Fatal(err)
	}
	useResolvConf(t, top.gw, "nameserver 127.0.0.1\nsearch evil.test\noptions ndots:5 timeout:2 attempts:2\n")
	_, log := startEgressdConfig(t, top.gw, `listeners:
  - {name: sni, mode: sni, address: 127.0.0.1:15443, upstream_port: 443}
log: {format: json}
policy:
  default: deny
  rules:
    - {name: allowed, action: allow, fqdn: [allowed.test]}
`, 1)
	from := log.mark()
	c, err := top.gw.dial("", "127.0.0.1:15443")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(clientHello(t, &tls.Config{ServerName: "allowed.test"})); err != nil {
		t.Fatal(err)
	}
	// The server's first flight shows the hello went through; the access
	// log is written when the connection closes.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 512)); n == 0 {
		t.Errorf("client: no answer from the server: %v", err)
	}
	c.Close()
	log.expect(t, from, "allowed.test through the system resolver", byListener("sni"), want{
		listener: "sni", dst: srvAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
		rule: rule("allowed"), action: "allow",
	})
}
