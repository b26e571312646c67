package gateway

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// proxyWorld is a loopback world for explicit listeners: an HTTPS server
// and two plain HTTP servers (one on 127.0.0.2, for IP-literal rules), a
// TLS echo server, a DNS server, and a gateway with three explicit
// listeners ("proxy", tunnel_sni match; "proxylog", log; "proxyignore",
// ignore).
type proxyWorld struct {
	*world
	https, plain, plain2 netip.AddrPort
	proxy, proxyLog      netip.AddrPort
	proxyIgnore          netip.AddrPort
}

// s3cretHash is bcrypt (cost 10) of "s3cret".
const s3cretHash = "$2a$10$nS3ZyEI3cMaQ.gHRsUQzn.rnw2CnXtSDc4D0YeajXIpkA8mZ4kyMW"

var proxyRecords = records{
	"good.test":        {"127.0.0.1"},
	"api.good.test":    {"127.0.0.1"},
	"nodest.test":      {"127.0.0.1"},
	"x.ads.test":       {"127.0.0.1"},
	"other.test":       {"127.0.0.1"},
	"report.good.test": {"127.0.0.1"},
}

// newProxyWorld starts the world; users, when not empty, is the config's
// users section, rules go before the standard ones, and enforce false
// makes it report-only.
func newProxyWorld(t *testing.T, users, rules string, enforce bool) *proxyWorld {
	t.Helper()
	w := &proxyWorld{world: &world{t: t, serverCh: make(chan string, 64)}}
	w.echo = w.startEcho()
	w.https = startHTTP(t, "127.0.0.1:0", true)
	w.plain = startHTTP(t, "127.0.0.1:0", false)
	w.plain2 = startHTTP(t, "127.0.0.2:0", false)
	cfgText := fmt.Sprintf(`listeners:
  - {name: proxy, mode: explicit, address: 127.0.0.1:0}
  - {name: proxylog, mode: explicit, address: 127.0.0.1:0, tunnel_sni: log}
  - {name: proxyignore, mode: explicit, address: 127.0.0.1:0, tunnel_sni: ignore}
resolver: %s
timeouts: {first_bytes: 200ms, client_hello: 3s, connect: 2s, idle: 1m}
%s
policy:
  enforce: %v
  default: deny
  rules:
%s
    - {name: good, action: allow, fqdn: ["good.test", "*.good.test"], destinations: ["127.0.0.0/8"]}
    - {name: lit, action: allow, destinations: ["127.0.0.2/32"]}
    - {name: nodest, action: allow, fqdn: ["nodest.test"]}
    - {name: ads, action: deny, fqdn: ["*.ads.test"]}
`, testnet.DNS(t, proxyRecords), users, enforce, rules)
	s := serveConfig(t, cfgText, time.Second)
	w.gw, w.logs, w.cancel, w.served = s.Gateway, s.logs, s.cancel, s.done
	w.proxy, w.proxyLog, w.proxyIgnore = w.gw.Addrs()["proxy"], w.gw.Addrs()["proxylog"], w.gw.Addrs()["proxyignore"]
	return w
}

// startHTTP runs an HTTP (or HTTPS) server on addr that answers every
// request with what it received: Host, path, and the headers a proxy must
// not pass on.
func startHTTP(t *testing.T, addr string, withTLS bool) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(rw, "host=%s path=%s proxy-authorization=%q proxy-connection=%q x-secret=%q body=%q",
			r.Host, r.URL.Path, r.Header.Get("Proxy-Authorization"), r.Header.Get("Proxy-Connection"),
			r.Header.Get("X-Secret"), body)
	})}
	if withTLS {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
		go srv.ServeTLS(ln, "", "")
	} else {
		go srv.Serve(ln)
	}
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(ln.Addr().String())
}

// client is a Go net/http client using proxyURL (http:// or socks5://).
// Each request gets a fresh connection, so each is one log line.
func client(t *testing.T, proxyURL string) *http.Client {
	u, err := url.Parse(proxyURL)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{
		Proxy:             http.ProxyURL(u),
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		DisableKeepAlives: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) uint16 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return uint16(p)
}
