package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The explicit proxy listeners, in gw: "proxy" without users, and a second
// egressd with users on "authproxy".
const (
	proxyAddr     = gwCliAddr + ":3128"
	authProxyAddr = gwCliAddr + ":3129"
	// s3cretHash is bcrypt (cost 10) of "s3cret".
	s3cretHash = "$2a$10$nS3ZyEI3cMaQ.gHRsUQzn.rnw2CnXtSDc4D0YeajXIpkA8mZ4kyMW"
)

const explicitPolicy = `resolver: ` + resolverAddr + `
mark: 0x100
timeouts: {first_bytes: 300ms, client_hello: 2s, connect: 5s, idle: 15m}
log: {format: json}
policy:
  enforce: true
  default: deny
  rules:
    - {name: ads, action: deny, fqdn: ["*.ads.test"]}
    - {name: lab-ssh, action: allow, destinations: ["10.99.2.0/24"], ports: [22]}
    - {name: allowed, action: allow, fqdn: ["allowed.test", "*.allowed.test"], ports: [80, 8443]}
    - {name: srv-ip, action: allow, destinations: ["` + srvAddr + `/32"], ports: [80]}
    - {name: srv-ip6, action: allow, destinations: ["` + srvAddr6 + `/128"], ports: [443]}
`

// explicitWorld is the topology with egressd's explicit listeners in gw and,
// in srv, the TLS greeter on :443, openssl s_server -www on :8443, an HTTP
// server on :80 and sshd on the lab address.
type explicitWorld struct {
	*world
	authLog *accessLog
}

func newExplicitWorld(t *testing.T) *explicitWorld {
	w := &explicitWorld{world: newWorld(t, worldOptions{intercept: direct})}
	records := maps.Clone(dnsRecords)
	records["lab.test."] = []string{labAddr}
	records["other.test."] = []string{srvAddr}
	startDNS(t, w.gw, resolverAddr, records)
	startOpenSSLServer(t, w.srv, srvAddr+":8443")
	startSSHD(t, w.srv, labAddr+":22")
	startHTTPEcho(t, w.srv, srvAddr+":80")
	_, w.log = startEgressdConfig(t, w.gw, "listeners:\n  - {name: proxy, mode: explicit, address: "+proxyAddr+"}\n"+explicitPolicy, 1)
	_, w.authLog = startEgressdConfig(t, w.gw, "listeners:\n  - {name: authproxy, mode: explicit, address: "+authProxyAddr+"}\n"+
		"users:\n  - {name: ci-runner, password_hash: \""+s3cretHash+"\"}\n"+explicitPolicy, 1)
	return w
}

// startHTTPEcho serves HTTP on addr in ns, answering with the Host and path.
func startHTTPEcho(t testing.TB, ns *netns, addr string) {
	ln := ns.listen(t, addr)
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "http-echo host=%s path=%s proxy-authorization=%q\n", r.Host, r.URL.Path, r.Header.Get("Proxy-Authorization"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func curl(t *testing.T, w *explicitWorld, args ...string) (string, error) {
	t.Helper()
	requireTools(t, "curl")
	return clientCommand(t, w.cli, "", "curl", append([]string{"-sS", "--max-time", "20", "--cacert", credentials.certFile}, args...)...)
}

func byFQDN(listener, fqdn string) func(accessLine) bool {
	return func(l accessLine) bool { return l.Listener == listener && l.FQDN == fqdn }
}

// TestExplicitProxy drives real clients through the explicit listener:
// curl as HTTP proxy client (https via CONNECT, http forwarded), with
// --proxy-user, with --socks5-hostname and --socks5 (an IP); ssh through
// nc -X connect and nc -X 5; openssl s_client -proxy; Go's net/http.
func TestExplicitProxy(t *testing.T) {
	w := newExplicitWorld(t)
	const okPage = "s_server -accept " + srvAddr + ":8443" // openssl s_server -www's status page

	curlTests := []struct {
		name    string
		args    []string
		ok      bool
		outHas  string
		log     *accessLog
		match   func(accessLine) bool
		want    want
		wantUsr string
	}{
		{name: "connect https allowed", args: []string{"-x", "http://" + proxyAddr, "https://allowed.test:8443/"}, ok: true, outHas: okPage,
			match: byFQDN("proxy", "allowed.test"),
			want:  want{dst: srvAddr + ":8443", fqdnSource: "connect", protocol: []string{"tls"}, rule: rule("allowed"), action: "allow", bytes: 1}},
		{name: "connect https denied", args: []string{"-x", "http://" + proxyAddr, "https://x.ads.test:8443/"}, outHas: "403",
			match: byFQDN("proxy", "x.ads.test"),
			want:  want{fqdnSource: "connect", rule: rule("ads"), action: "deny"}},
		{name: "connect private answer", args: []string{"-x", "http://" + proxyAddr, "https://private.allowed.test:8443/"}, outHas: "403",
			match: byFQDN("proxy", "private.allowed.test"),
			want:  want{rule: rule("allowed"), action: "deny", reasonHas: "restricted address " + labAddr}},
		{name: "connect mixed answers", args: []string{"-x", "http://" + proxyAddr, "https://mixed.allowed.test:8443/"}, outHas: "403",
			match: byFQDN("proxy", "mixed.allowed.test"),
			want:  want{action: "deny", reasonHas: "restricted"}},
		{name: "plain http allowed", args: []string{"-x", "http://" + proxyAddr, "http://www.allowed.test/p"}, ok: true, outHas: "http-echo host=www.allowed.test path=/p",
			match: byFQDN("proxy", "www.allowed.test"),
			want:  want{dst: srvAddr + ":80", fqdnSource: "host", protocol: []string{"http"}, rule: rule("allowed"), action: "allow", bytes: 1}},
		{name: "plain http denied", args: []string{"-x", "http://" + proxyAddr, "http://x.ads.test/"}, ok: true, outHas: `egressd: denied by rule "ads"`,
			match: byFQDN("proxy", "x.ads.test"),
			want:  want{fqdnSource: "host", rule: rule("ads"), action: "deny"}},
		{name: "proxy-user allowed", args: []string{"-x", "http://" + authProxyAddr, "--proxy-user", "ci-runner:s3cret", "http://allowed.test/u"}, ok: true,
			outHas: `path=/u proxy-authorization=""`, log: w.authLog, match: byFQDN("authproxy", "allowed.test"),
			want: want{action: "allow", rule: rule("allowed")}, wantUsr: "ci-runner"},
		{name: "proxy-user https", args: []string{"-x", "http://" + authProxyAddr, "--proxy-user", "ci-runner:s3cret", "https://www.allowed.test:8443/"}, ok: true,
			outHas: okPage, log: w.authLog, match: byFQDN("authproxy", "www.allowed.test"),
			want: want{action: "allow", fqdnSource: "connect"}, wantUsr: "ci-runner"},
		{name: "proxy-user missing", args: []string{"-x", "http://" + authProxyAddr, "-w", "%{http_code}", "http://x.allowed.test/"}, ok: true,
			outHas: "407", log: w.authLog, match: func(l accessLine) bool { return l.Reason == "http proxy: proxy authentication required" },
			want: want{action: "deny"}},
		{name: "proxy-user wrong", args: []string{"-x", "http://" + authProxyAddr, "--proxy-user", "ci-runner:nope", "https://allowed.test:8443/"},
			outHas: "407", log: w.authLog, match: func(l accessLine) bool {
				return strings.Contains(l.Reason, `authentication failed for user "ci-runner"`)
			},
			want: want{action: "deny"}},
		{name: "socks5-hostname allowed", args: []string{"--socks5-hostname", proxyAddr, "https://allowed.test:8443/s"}, ok: true, outHas: okPage,
			match: func(l accessLine) bool { return l.FQDNSource == "socks" && l.FQDN == "allowed.test" },
			want:  want{dst: srvAddr + ":8443", protocol: []string{"tls"}, rule: rule("allowed"), action: "allow", bytes: 1}},
		{name: "socks5-hostname denied", args: []string{"--socks5-hostname", proxyAddr, "https://x.ads.test:8443/"},
			match: func(l accessLine) bool { return l.FQDNSource == "socks" && l.FQDN == "x.ads.test" },
			want:  want{rule: rule("ads"), action: "deny"}},
		{name: "socks5 ip allowed", args: []string{"--socks5", proxyAddr, "http://" + srvAddr + "/ip"}, ok: true, outHas: "http-echo host=" + srvAddr + " path=/ip",
			match: func(l accessLine) bool { return l.Dst == srvAddr+":80" && l.Protocol == "http" },
			want:  want{fqdnSource: "none", rule: rule("srv-ip"), action: "allow", bytes: 1}},
		{name: "socks5 ip denied", args: []string{"--socks5", proxyAddr, "http://" + attackerAddr + "/"},
			match: func(l accessLine) bool { return l.Dst == attackerAddr+":80" },
			want:  want{fqdnSource: "none", rule: rule(""), action: "deny"}},
		{name: "socks5-hostname with users", args: []string{"--socks5-hostname", authProxyAddr, "--proxy-user", "ci-runner:s3cret", "http://allowed.test/su"}, ok: true,
			outHas: "path=/su", log: w.authLog, match: func(l accessLine) bool { return l.FQDNSource == "socks" && l.FQDN == "allowed.test" },
			want: want{action: "allow"}, wantUsr: "ci-runner"},
		{name: "socks5 without credentials", args: []string{"--socks5-hostname", authProxyAddr, "http://allowed.test/"},
			log: w.authLog, match: func(l accessLine) bool { return strings.Contains(l.Reason, "no acceptable method") },
			want: want{action: "deny"}},
	}
	for _, tt := range curlTests {
		t.Run("curl "+tt.name, func(t *testing.T) {
			log := tt.log
			if log == nil {
				log = w.log
			}
			from := log.mark()
			out, err := curl(t, w, tt.args...)
			if (err == nil) != tt.ok || !strings.Contains(out, tt.outHas) {
				t.Errorf("curl %s: exit %v, output %q; want success %v and %q", strings.Join(tt.args, " "), err, out, tt.ok, tt.outHas)
			}
			line := log.expect(t, from, tt.name, tt.match, tt.want)
			if line.User != tt.wantUsr {
				t.Errorf("user = %q, want %q", line.User, tt.wantUsr)
			}
		})
	}

	t.Run("curl keep-alive, decided per request", func(t *testing.T) {
		from := w.log.mark()
		out, err := curl(t, w, "-x", "http://"+proxyAddr, "http://allowed.test/1", "http://www.allowed.test/2", "http://x.ads.test/3")
		for _, s := range []string{"host=allowed.test path=/1", "host=www.allowed.test path=/2", `denied by rule "ads"`} {
			if !strings.Contains(out, s) {
				t.Errorf("curl with three URLs: output lacks %q (exit %v):\n%s", s, err, out)
			}
		}
		a := w.log.expect(t, from, "first", byFQDN("proxy", "allowed.test"), want{action: "allow"})
		b := w.log.expect(t, from, "second", byFQDN("proxy", "www.allowed.test"), want{action: "allow"})
		c := w.log.expect(t, from, "third", byFQDN("proxy", "x.ads.test"), want{action: "deny", rule: rule("ads")})
		if a.Src != b.Src || b.Src != c.Src {
			t.Errorf("the three requests came from %s, %s, %s; want one kept-alive connection", a.Src, b.Src, c.Src)
		}
	})

	_, key, _ := sshKeys(t)
	sshTests := []struct {
		name, proxyCmd, host string
		ok                   bool
		match                func(accessLine) bool
		want                 want
	}{
		{"nc -X connect, name", "nc -X connect -x " + proxyAddr + " %h %p", "lab.test", true, byFQDN("proxy", "lab.test"),
			want{dst: labAddr + ":22", fqdnSource: "connect", protocol: []string{"ssh"}, rule: rule("lab-ssh"), action: "allow", bytes: 1}},
		{"nc -X 5, address", "nc -X 5 -x " + proxyAddr + " %h %p", labAddr, true,
			func(l accessLine) bool { return l.Listener == "proxy" && l.Dst == labAddr+":22" && l.FQDN == "" },
			want{fqdnSource: "none", protocol: []string{"ssh"}, rule: rule("lab-ssh"), action: "allow", bytes: 1}},
		{"nc -X connect, denied", "nc -X connect -x " + proxyAddr + " %h %p", attackerAddr, false,
			func(l accessLine) bool { return l.Listener == "proxy" && l.Dst == attackerAddr+":22" },
			want{fqdnSource: "none", rule: rule(""), action: "deny"}},
		{"nc -X 5, name denied", "nc -X 5 -x " + proxyAddr + " %h %p", "x.ads.test", false, byFQDN("proxy", "x.ads.test"),
			want{fqdnSource: "socks", rule: rule("ads"), action: "deny"}},
	}
	for _, tt := range sshTests {
		t.Run("ssh "+tt.name, func(t *testing.T) {
			from := w.log.mark()
			out, err := clientCommand(t, w.cli, "", "ssh", "-F", "/dev/null", "-i", key,
				"-o", "ProxyCommand="+tt.proxyCmd,
				"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
				"-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "root@"+tt.host, "echo", "ok")
			if got := err == nil && strings.TrimSpace(out) == "ok"; got != tt.ok {
				t.Errorf("ssh via %q root@%s echo ok: exit %v, output %q; want success %v", tt.proxyCmd, tt.host, err, out, tt.ok)
			}
			w.log.expect(t, from, tt.name, tt.match, tt.want)
		})
	}

	t.Run("openssl s_client -proxy, SNI differs from CONNECT", func(t *testing.T) {
		from := w.log.mark()
		out, err := sClient(t, w.world, "", "-proxy", proxyAddr, "-connect", "allowed.test:8443", "-servername", "other.test")
		if err == nil || !strings.Contains(out, "alert access denied") {
			t.Errorf("s_client with a different SNI: exit %v, want an access denied alert:\n%s", err, out)
		}
		w.log.expect(t, from, "sni mismatch", byFQDN("proxy", "allowed.test"), want{
			fqdnSource: "connect", protocol: []string{"tls"}, rule: rule("allowed"), action: "deny",
			reasonHas: `TLS server name "other.test" inside the tunnel differs from the requested allowed.test (tunnel_sni: match)`,
		})
	})

	t.Run("Go net/http", func(t *testing.T) {
		for _, tt := range []struct {
			proxy, url string
			ok         bool
			fqdn       string
			want       want
		}{
			{"http://" + proxyAddr, "https://allowed.test:8443/", true, "allowed.test", want{fqdnSource: "connect", action: "allow"}},
			{"socks5://" + proxyAddr, "https://www.allowed.test:8443/", true, "www.allowed.test", want{fqdnSource: "socks", action: "allow"}},
			{"http://" + proxyAddr, "http://allowed.test/go", true, "allowed.test", want{fqdnSource: "host", action: "allow"}},
			{"http://" + proxyAddr, "https://x.ads.test:8443/", false, "x.ads.test", want{fqdnSource: "connect", action: "deny", rule: rule("ads")}},
			{"socks5://" + proxyAddr, "https://x.ads.test:8443/", false, "x.ads.test", want{fqdnSource: "socks", action: "deny", rule: rule("ads")}},
		} {
			from := w.log.mark()
			err := goGet(w, tt.proxy, tt.url)
			if (err == nil) != tt.ok {
				t.Errorf("Go GET %s via %s: %v, want success %v", tt.url, tt.proxy, err, tt.ok)
			}
			w.log.expect(t, from, tt.url, func(l accessLine) bool { return l.FQDN == tt.fqdn && l.FQDNSource == tt.want.fqdnSource }, tt.want)
		}
	})

	// IPv6 literals: CONNECT [v6]:port and a SOCKS5 IPv6 address, then a
	// Go TLS client without SNI (an IP target with an SNI would be a
	// tunnel_sni mismatch) to the TLS greeter on srv's IPv6 address.
	t.Run("ipv6 literal", func(t *testing.T) {
		for _, tt := range []struct {
			name string
			open func(c net.Conn) error
		}{
			{"connect", func(c net.Conn) error {
				fmt.Fprintf(c, "CONNECT [%s]:443 HTTP/1.1\r\n\r\n", srvAddr6)
				b := make([]byte, len("HTTP/1.1 200 Connection established\r\n\r\n"))
				if _, err := io.ReadFull(c, b); err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 200 ") {
					return fmt.Errorf("CONNECT: %q %v", b, err)
				}
				return nil
			}},
			{"socks5", func(c net.Conn) error {
				req := append([]byte{5, 1, 0, 5, 1, 0, 4}, net.ParseIP(srvAddr6).To16()...)
				c.Write(append(req, 1, 187))
				// Method answer, then the reply: egressd's bound address is
				// IPv6 here (4 + 16 + 2 bytes).
				b := make([]byte, 2+4+16+2)
				if _, err := io.ReadFull(c, b); err != nil || b[3] != 0 || b[5] != 4 {
					return fmt.Errorf("SOCKS5: %x %v", b, err)
				}
				return nil
			}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				from := w.log.mark()
				c, err := w.cli.dial("", proxyAddr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				if err := tt.open(c); err != nil {
					t.Fatal(err)
				}
				_, out, err := greet(c, &tls.Config{InsecureSkipVerify: true})
				if want := "local=[" + srvAddr6 + "]:443"; err != nil || !strings.Contains(out, want) {
					t.Errorf("TLS through the tunnel: %q %v, want %q", out, err, want)
				}
				w.log.expect(t, from, "ipv6 "+tt.name, bySrc(c.LocalAddr().String()), want{
					dst: "[" + srvAddr6 + "]:443", fqdnSource: "none", protocol: []string{"tls"}, rule: rule("srv-ip6"), action: "allow", bytes: 1,
				})
			})
		}
	})

	t.Run("bad input", func(t *testing.T) {
		for _, tt := range []struct {
			name   string
			send   string
			want   string
			reason string
		}{
			{"malformed CONNECT", "CONNECT allowed.test HTTP/1.1\r\n\r\n", "HTTP/1.1 400 ", "want host:port"},
			{"oversized request line", "GET http://allowed.test/" + strings.Repeat("a", 10000) + " HTTP/1.1\r\n\r\n", "HTTP/1.1 414 ", "request line too long"},
			{"oversized head", "CONNECT allowed.test:8443 HTTP/1.1\r\n" + strings.Repeat("X-Pad: 0123456789\r\n", 2000) + "\r\n", "HTTP/1.1 431 ", "head too large"},
			{"stalled", "CONNECT allowed.test:8443 HTTP/1.1\r\nHo", "HTTP/1.1 408 ", "handshake timeout"},
			{"socks no acceptable method", "\x05\x01\x02", "\x05\xff", "no acceptable method"},
			{"socks stalled", "\x05\x01\x00\x05\x01", "\x05\x00", "handshake timeout"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				from := w.log.mark()
				c, err := w.cli.dial("", proxyAddr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.Write([]byte(tt.send))
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				got, _ := io.ReadAll(c)
				if !strings.HasPrefix(string(got), tt.want) {
					t.Errorf("sent %.40q, got %.60q, want it to start with %q", tt.send, got, tt.want)
				}
				w.log.expect(t, from, tt.name, bySrc(c.LocalAddr().String()), want{action: "deny", reasonHas: tt.reason})
			})
		}
	})
}

// goGet runs Go's net/http client, from cli, through proxy to u.
func goGet(w *explicitWorld, proxy, u string) error {
	pu, err := url.Parse(proxy)
	if err != nil {
		return err
	}
	tr := &http.Transport{
		Proxy: http.ProxyURL(pu),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return w.cli.dial("", addr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: w.roots},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}
