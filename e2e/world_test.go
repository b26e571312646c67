package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"maps"
	"slices"
	"testing"
	"time"
)

// interception is how connections from cli reach egressd.
type interception int

const (
	direct      interception = iota // no egressd: cli reaches srv through gw's routing
	redirect                        // iptables REDIRECT to the transparent listeners
	tproxy                          // iptables TPROXY to the tproxy listener
	sniOnly                         // egressd runs; clients use its sni listener
	nftRedirect                     // redirect, written for nftables
	nftTProxy                       // tproxy, written for nftables
)

// world is a topology with its servers and, unless direct, egressd in gw:
//
//   - srv 0.0.0.0:443       Go TLS server (tlsServer) on every srv address,
//     and on [2001:db8:100::10]:443
//   - srv 198.51.100.10:25  greeter (server-first)
//   - gw  127.0.0.1:5353    DNS server for egressd (dnsRecords)
//
// openssl s_server and sshd are started by the tests that use them.
type world struct {
	*topology
	tls     *tlsServer
	greeter *greeter
	roots   *x509.CertPool
	log     *accessLog // nil when direct
}

type worldOptions struct {
	intercept   interception
	clientHello time.Duration // egressd's client_hello timeout; 0 means 5s
	// ipv6 adds dnsRecords6 (AAAA records) to the DNS server.
	ipv6 bool
}

func newWorld(t testing.TB, opts worldOptions) *world {
	t.Helper()
	top := newTopology(t)
	cert, roots := serverCert(t)
	w := &world{
		topology: top,
		tls:      startTLSServer(t, top.srv, cert, "0.0.0.0:443", "["+srvAddr6+"]:443"),
		greeter:  startGreeter(t, top.srv, srvAddr+":25"),
		roots:    roots,
	}
	if opts.intercept == direct {
		return w
	}
	records := dnsRecords
	if opts.ipv6 {
		records = maps.Clone(dnsRecords)
		for name, addrs := range dnsRecords6 {
			records[name] = append(slices.Clone(records[name]), addrs...)
		}
	}
	startDNS(t, top.gw, resolverAddr, records)
	if opts.clientHello == 0 {
		opts.clientHello = 5 * time.Second
	}
	_, w.log = startEgressd(t, top.gw, opts.clientHello)
	switch opts.intercept {
	case redirect:
		top.redirect(t)
	case tproxy:
		top.tproxy(t)
	case nftRedirect:
		top.nftRedirect(t)
	case nftTProxy:
		top.nftTProxy(t)
	}
	return w
}

// tlsConfig is a Go client config for name that trusts the test certificate.
func (w *world) tlsConfig(name string, alpn ...string) *tls.Config {
	return &tls.Config{ServerName: name, RootCAs: w.roots, NextProtos: alpn}
}
