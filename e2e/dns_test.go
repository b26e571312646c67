package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The DNS world: egressd's DNS forwarder on gw's address towards cli, a
// real dnsmasq as its upstream (on gw's loopback, fixed records), clients in
// cli that resolve through egressd with dig, getent and ssh.
const (
	dnsListenAddr = gwCliAddr + ":53"
	dnsmasqPort   = "5300"
	deadUpstream  = "127.0.0.1:5399" // nothing listens: the forwarder fails over
	echParam      = "AEX+DQBBugAgACAB8bR0yn4Ff8y2mzF2zjYrmZ4tqaT7kX3Q7HszH8rjSQAEAAEAAQASY292ZXIuZXhhbXBsZS50ZXN0AAA="
)

const dnsConfig = `listeners:
  - name: transparent
    mode: transparent
    address: 0.0.0.0:` + portTransparent + `
    sni_destination: verify
resolver: 127.0.0.1:` + dnsmasqPort + `
mark: 0x100
timeouts: {first_bytes: 300ms, client_hello: 5s, connect: 5s, idle: 15m}
dns:
  address: ` + dnsListenAddr + `
  upstreams: ["` + deadUpstream + `", "127.0.0.1:` + dnsmasqPort + `"]
  remember: 10m
  filter: true
  strip_ech: true
  rate_limit: 50
policy:
  default: deny
  rules:
    - {name: git-over-ssh, action: allow, fqdn: [git.example.test], ports: [22], protocols: [ssh, server-first]}
    - {name: mail, action: allow, fqdn: [mail.example.test], ports: [25], protocols: [server-first]}
    - {name: web, action: allow, fqdn: [allowed.test, svc.example.test], ports: [443]}
`

// TestDNS: names for traffic that carries none, from the client's own
// look-ups through egressd's DNS forwarder.
func TestDNS(t *testing.T) {
	requireTools(t, "dnsmasq", "dig", "getent", "ssh")
	top := newTopology(t)
	cert, roots := serverCert(t)
	startTLSServer(t, top.srv, cert, "0.0.0.0:443")
	startGreeter(t, top.srv, srvAddr+":25")
	startSSHD(t, top.srv, srvAddr+":22")
	startDnsmasq(t, top.gw)
	_, log := startEgressdConfig(t, top.gw, dnsConfig, 2)
	// egressd's DNS queries (its resolver's and its forwarder's, both to
	// dnsmasq) must carry its mark like its other upstream sockets, so
	// that policy routing and "exempt by mark" rules see them too. Only
	// those from 127.0.0.1 count: the test's own dig to dnsmasq comes from
	// 127.0.0.2.
	top.gw.countMarked(t, "-o", "lo", "-s", "127.0.0.1", "-p", "udp", "--dport", dnsmasqPort)
	// Every TCP connection from cli goes to the transparent listener,
	// except DNS over TCP to egressd itself.
	top.gw.exec(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-i", gwCliIf, "-p", "tcp", "-d", gwCliAddr, "-j", "RETURN")
	top.gw.exec(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-i", gwCliIf, "-p", "tcp", "-j", "REDIRECT", "--to-ports", portTransparent)
	useResolver(t, top.cli, gwCliAddr)
	w := &world{topology: top, roots: roots, log: log}

	t.Run("ssh without resolving", func(t *testing.T) {
		from := log.mark()
		out, err := sshCommand(t, w, cliAddr, srvAddr)
		if err == nil || strings.TrimSpace(out) == "ok" {
			t.Errorf("ssh root@%s from a client that resolved nothing: want a failure, got exit %v:\n%s", srvAddr, err, out)
		}
		log.expect(t, from, "ssh by address", byListener("transparent"), want{
			dst: srvAddr + ":22", fqdnSource: "none", protocol: []string{"ssh", "server-first"}, rule: rule(""), action: "deny",
		})
	})
	t.Run("dig and getent", func(t *testing.T) {
		for _, args := range [][]string{
			{"dig", "@" + gwCliAddr, "git.example.test", "A", "+short"},
			{"dig", "@" + gwCliAddr, "git.example.test", "A", "+short", "+tcp"},
			{"getent", "ahostsv4", "git.example.test"},
		} {
			out, err := clientCommand(t, top.cli, "", args[0], args[1:]...)
			if err != nil || !strings.Contains(out, srvAddr) {
				t.Errorf("%s: want %s, got exit %v:\n%s", strings.Join(args, " "), srvAddr, err, out)
			}
		}
	})
	t.Run("ssh after resolving", func(t *testing.T) {
		from := log.mark()
		out, err := sshCommand(t, w, cliAddr, "git.example.test")
		if err != nil || strings.TrimSpace(out) != "ok" {
			t.Errorf("ssh root@git.example.test echo ok: exit %v, output:\n%s", err, out)
		}
		log.expect(t, from, "ssh by name", byListener("transparent"), want{
			dst: srvAddr + ":22", fqdn: "git.example.test", fqdnSource: "dns", protocol: []string{"ssh", "server-first"},
			rule: rule("git-over-ssh"), action: "allow", reasonHas: `matched rule "git-over-ssh"`, bytes: 1,
		})
	})
	t.Run("another client resolved it", func(t *testing.T) {
		// cliAddr resolved git.example.test to srvAddr above; cliTrustAddr
		// did not, and must not borrow that name.
		from := log.mark()
		out, err := sshCommand(t, w, cliTrustAddr, srvAddr)
		if err == nil || strings.TrimSpace(out) == "ok" {
			t.Errorf("ssh -b %s root@%s: want a failure, got exit %v:\n%s", cliTrustAddr, srvAddr, err, out)
		}
		log.expect(t, from, "ssh from the other client", func(l accessLine) bool { return strings.HasPrefix(l.Src, cliTrustAddr+":") }, want{
			dst: srvAddr + ":22", fqdnSource: "none", rule: rule(""), action: "deny",
		})
	})
	t.Run("server-first greeting", func(t *testing.T) {
		if out, err := clientCommand(t, top.cli, "", "dig", "@"+gwCliAddr, "mail.example.test", "+short"); err != nil || !strings.Contains(out, srvAddr) {
			t.Fatalf("dig mail.example.test: exit %v:\n%s", err, out)
		}
		from := log.mark()
		start := time.Now()
		c, err := top.cli.dial(cliAddr+":0", srvAddr+":25")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		src := c.LocalAddr().String()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		r := bufio.NewReader(c)
		banner, err := r.ReadString('\n')
		took := time.Since(start)
		if err != nil || banner != "220 ready\r\n" {
			t.Fatalf("banner: %q, %v; want %q", banner, err, "220 ready\r\n")
		}
		t.Logf("greeting arrived %v after connect (first_bytes 300ms)", took.Round(time.Millisecond))
		if took > 5*time.Second {
			t.Errorf("greeting took %v; a server-first client must get it promptly", took)
		}
		fmt.Fprint(c, "QUIT\r\n")
		r.ReadString('\n')
		c.Close()
		log.expect(t, from, "server-first by name", bySrc(src), want{
			dst: srvAddr + ":25", fqdn: "mail.example.test", fqdnSource: "dns", protocol: []string{"server-first"},
			rule: rule("mail"), action: "allow", bytes: 1,
		})
	})
	t.Run("filtered name", func(t *testing.T) {
		from := log.mark()
		out, _ := clientCommand(t, top.cli, "", "dig", "@"+gwCliAddr, "blocked.example.test", "A")
		if !strings.Contains(out, "status: REFUSED") {
			t.Errorf("dig blocked.example.test: want status: REFUSED:\n%s", out)
		}
		line := log.find(t, from, "dns refusal", func(l accessLine) bool { return l.Kind == "dns" && l.QName == "blocked.example.test." })
		t.Logf("access log: %s", line.raw)
		if line.Rcode != "REFUSED" || line.Result != "refused" || !strings.HasPrefix(line.Src, cliAddr+":") {
			t.Errorf("dns line: rcode %q result %q src %q; want REFUSED, refused, from %s", line.Rcode, line.Result, line.Src, cliAddr)
		}
	})
	t.Run("https record loses ech", func(t *testing.T) {
		// From 127.0.0.2: not counted with egressd's queries (see countMarked above).
		direct, err := top.gw.command(context.Background(), "dig", "-b", "127.0.0.2", "@127.0.0.1", "-p", dnsmasqPort, "svc.example.test", "HTTPS", "+short").CombinedOutput()
		if err != nil || !strings.Contains(string(direct), "ech=") {
			t.Fatalf("dnsmasq itself: want an HTTPS record with ech, got %v:\n%s", err, direct)
		}
		out, err := clientCommand(t, top.cli, "", "dig", "@"+gwCliAddr, "svc.example.test", "HTTPS", "+short")
		if err != nil || !strings.Contains(out, `alpn="h2"`) || strings.Contains(out, "ech=") {
			t.Errorf("through egressd: want the HTTPS record with alpn and without ech, got exit %v:\n%s", err, out)
		}
	})
	t.Run("sni verified by the client's own lookup", func(t *testing.T) {
		if out, err := clientCommand(t, top.cli, "", "dig", "@"+gwCliAddr, "allowed.test", "+short"); err != nil || !strings.Contains(out, srvAddr) {
			t.Fatalf("dig allowed.test: exit %v:\n%s", err, out)
		}
		from := log.mark()
		c, err := top.cli.dial(cliAddr+":0", srvAddr+":443")
		if err != nil {
			t.Fatal(err)
		}
		src := c.LocalAddr().String()
		if _, greeting, err := greet(c, w.tlsConfig("allowed.test")); err != nil || !strings.HasPrefix(greeting, "hello sni=allowed.test") {
			t.Errorf("TLS to allowed.test: %v, greeting %q", err, greeting)
		}
		log.expect(t, from, "verified SNI", bySrc(src), want{
			dst: srvAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni", rule: rule("web"), action: "allow",
			reasonHas: "name verified: this client resolved it", bytes: 1,
		})
	})
	t.Run("flood and junk from one client", func(t *testing.T) {
		// cliTrustAddr sends 2000 queries as fast as it can, then junk;
		// egressd drops beyond rate_limit (50/s), logs the drop, and still
		// answers cliAddr.
		from := log.mark()
		var answered int
		err := top.cli.do(func() error {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(cliTrustAddr)}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dnsListenAddr)))
			if err != nil {
				return err
			}
			defer c.Close()
			q := new(dns.Msg)
			q.SetQuestion("git.example.test.", dns.TypeA)
			for i := range 2000 {
				q.Id = uint16(i)
				b, _ := q.Pack()
				c.Write(b)
			}
			c.Write([]byte{0xff, 0xff, 0, 0, 0xff})
			c.Write(bytes.Repeat([]byte{0xc0}, 300))
			buf := make([]byte, 4096)
			for {
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Read(buf); err != nil {
					return nil
				}
				answered++
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d of 2000 flood queries answered", answered)
		if answered == 0 || answered >= 2000 {
			t.Errorf("%d of 2000 flood queries answered; want some, and far from all (rate_limit 50)", answered)
		}
		line := log.find(t, from, "dns drop", func(l accessLine) bool { return l.Kind == "dns" && l.Result == "dropped" })
		t.Logf("access log: %s", line.raw)
		if !strings.HasPrefix(line.Src, cliTrustAddr+":") {
			t.Errorf("dropped line from %s, want %s", line.Src, cliTrustAddr)
		}
		if out, err := clientCommand(t, top.cli, "", "dig", "@"+gwCliAddr, "-b", cliAddr, "git.example.test", "+short"); err != nil || !strings.Contains(out, srvAddr) {
			t.Errorf("dig from the other client after the flood: exit %v:\n%s", err, out)
		}
	})
	t.Run("real ech or grease", func(t *testing.T) { testRealECH(t, top) })
	t.Run("spoofed sni", func(t *testing.T) {
		// The client resolved allowed.test to srvAddr, then claims it on a
		// connection to another address.
		from := log.mark()
		out, err := sClient(t, w, "", "-connect", attackerAddr+":443", "-servername", "allowed.test")
		if err == nil || !strings.Contains(out, "alert access denied") {
			t.Errorf("openssl s_client to %s with SNI allowed.test: want access denied, got exit %v:\n%s", attackerAddr, err, out)
		}
		log.expect(t, from, "spoofed SNI", byListener("transparent"), want{
			dst: attackerAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni", action: "deny", reasonHas: "does not resolve",
		})
	})
	// The subtests above made egressd query dnsmasq as a forwarder (dig,
	// getent) and as a resolver (the spoofed SNI's verification).
	t.Run("queries carry the mark", func(t *testing.T) {
		marked, unmarked := top.gw.markedCounts(t)
		if marked == 0 || unmarked != 0 {
			t.Errorf("UDP packets from gw to dnsmasq (port %s): %d with mark 0x100, %d without; want some, all marked", dnsmasqPort, marked, unmarked)
		}
	})
}

// sshCommand runs `ssh root@host echo ok` in cli from the address src.
func sshCommand(t *testing.T, w *world, src, host string) (string, error) {
	t.Helper()
	_, key, _ := sshKeys(t)
	return clientCommand(t, w.cli, "", "ssh", "-F", "/dev/null", "-i", key, "-b", src,
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "root@"+host, "echo", "ok")
}

// startDnsmasq runs dnsmasq on gw's loopback as egressd's upstream, with
// fixed records and nothing else: --local=/test/ makes every other name
// under test NXDOMAIN instead of a forward to nowhere.
func startDnsmasq(t *testing.T, gw *netns) {
	t.Helper()
	https := rdataHex(t, `svc.example.test. 60 IN HTTPS 1 . alpn="h2" ech="`+echParam+`"`)
	dir := t.TempDir()
	args := []string{"--keep-in-foreground", "--log-facility=-", "--log-queries", "--conf-file=/dev/null",
		"--no-resolv", "--no-hosts", "--user=root", "--pid-file=" + filepath.Join(dir, "dnsmasq.pid"),
		"--listen-address=127.0.0.1", "--bind-interfaces", "--port=" + dnsmasqPort, "--local=/test/",
		"--host-record=git.example.test," + srvAddr,
		"--host-record=mail.example.test," + srvAddr,
		"--host-record=allowed.test," + srvAddr,
		"--host-record=blocked.example.test," + srvAddr,
		"--host-record=svc.example.test," + srvAddr,
		"--host-record=cover.example.test," + srvAddr,
		"--dns-rr=svc.example.test,65," + https,
	}
	p := startProcess(t, "dnsmasq", gw.command(context.Background(), "dnsmasq", args...), nil, nil)
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := gw.command(context.Background(), "dig", "@127.0.0.1", "-p", dnsmasqPort, "+short", "+time=1", "+tries=1", "git.example.test").Output()
		if strings.Contains(string(out), srvAddr) {
			return
		}
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("dnsmasq does not answer on 127.0.0.1:%s:\n%s", dnsmasqPort, p.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rdataHex is the RDATA of one RR in presentation format, in hex, as
// dnsmasq's --dns-rr wants it.
func rdataHex(t *testing.T, text string) string {
	t.Helper()
	rr, err := dns.NewRR(text)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	off, err := dns.PackRR(rr, buf, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(buf[off-int(rr.Header().Rdlength) : off])
}

// useResolver makes processes run in ns with `ip netns exec` use server as
// their DNS resolver: ip netns exec bind-mounts /etc/netns/NAME/resolv.conf
// over /etc/resolv.conf.
func useResolver(t *testing.T, ns *netns, server string) {
	t.Helper()
	useResolvConf(t, ns, "nameserver "+server+"\noptions timeout:2 attempts:2\n")
}

// useResolvConf gives processes run in ns a resolv.conf of their own.
func useResolvConf(t *testing.T, ns *netns, conf string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", ns.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// echConfigText is a second egressd beside the first, for ECH: strip_ech
// off, so clients get ECH configs; its DNS on port 5353, and connections
// to srvAddr:8443 redirected to its listener.
const echConfigText = `listeners:
  - name: ech
    mode: transparent
    address: 0.0.0.0:15005
    sni_destination: verify
resolver: 127.0.0.1:` + dnsmasqPort + `
mark: 0x100
dns:
  address: ` + gwCliAddr + `:5353
  upstreams: ["127.0.0.1:` + dnsmasqPort + `"]
  strip_ech: false
  filter: false # the client asks for svc.example.test, which no rule names
policy:
  default: deny
  rules:
    - {name: cover, action: allow, fqdn: [cover.example.test], ports: [8443]}
`

// testRealECH: a Go client that got svc.example.test's ECH config through
// egressd's DNS connects with ECH: its outer SNI is the public name
// cover.example.test, and egressd logs ech: true and decides on that name.
// The same hello with a config_id egressd never handed out (what GREASE
// looks like) logs ech: false.
func testRealECH(t *testing.T, top *topology) {
	startTLSServer(t, top.srv, mustCert(t), srvAddr+":8443")
	_, log := startEgressdConfig(t, top.gw, echConfigText, 2)
	top.gw.exec(t, "iptables", "-t", "nat", "-I", "PREROUTING", "1", "-i", gwCliIf, "-p", "tcp", "-d", srvAddr, "--dport", "8443",
		"-j", "REDIRECT", "--to-ports", "15005")

	var list []byte
	err := top.cli.do(func() error {
		q := new(dns.Msg)
		q.SetQuestion("svc.example.test.", dns.TypeHTTPS)
		c := &dns.Client{Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(cliAddr)}}}
		r, _, err := c.Exchange(q, gwCliAddr+":5353")
		if err != nil {
			return err
		}
		for _, rr := range r.Answer {
			if h, ok := rr.(*dns.HTTPS); ok {
				for _, kv := range h.Value {
					if e, ok := kv.(*dns.SVCBECHConfig); ok {
						list = e.ECH
					}
				}
			}
		}
		return nil
	})
	if err != nil || list == nil {
		t.Fatalf("HTTPS svc.example.test through the strip_ech: false forwarder: %v, ech config %x", err, list)
	}
	grease := bytes.Clone(list)
	grease[6]++ // config_id: ECHConfigList length (2), version (2), length (2), then config_id
	for _, tc := range []struct {
		name string
		list []byte
		ech  bool
	}{{"config from egressd", list, true}, {"unknown config_id", grease, false}} {
		t.Run(tc.name, func(t *testing.T) {
			from := log.mark()
			c, err := top.cli.dial(cliAddr+":0", srvAddr+":8443")
			if err != nil {
				t.Fatal(err)
			}
			src := c.LocalAddr().String()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			// The server has no ECH key, so the handshake fails once
			// egressd has relayed the hello; the log line is the point.
			tls.Client(c, &tls.Config{ServerName: "secret.example.test", MinVersion: tls.VersionTLS13,
				EncryptedClientHelloConfigList: tc.list}).Handshake()
			c.Close()
			line := log.find(t, from, "ECH connection", bySrc(src))
			t.Logf("access log: %s", line.raw)
			if line.ECH != tc.ech || line.FQDN != "cover.example.test" || line.Rule != "cover" || line.Action != "allow" {
				t.Errorf("ech %v fqdn %q rule %q action %q; want ech %v, the outer name cover.example.test, rule cover, allow",
					line.ECH, line.FQDN, line.Rule, line.Action, tc.ech)
			}
		})
	}
}

// mustCert is the tests' server certificate.
func mustCert(t *testing.T) tls.Certificate {
	cert, _ := serverCert(t)
	return cert
}
