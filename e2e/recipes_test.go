package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
)

// A recipe is one way the README or deploy/ tells an operator to intercept
// the workloads' traffic, run in gw as the operator would run it.
type recipe struct {
	name   string
	family int    // 4 or 6: the clients' traffic and egressd's addresses
	tproxy bool   // the listener needs tproxy: true
	local  bool   // gw's own processes are intercepted too (nat OUTPUT)
	shell  string // run with sh -ec in gw
	env    []string
}

// The README's recipes send to port 15001, with egressd's mark 0x100.
const recipePort = "15001"

// gwSrvAddr is gw's other address, towards srv: what a workload would call
// the gateway's public address.
const gwSrvAddr = "198.51.100.1"

// TestRecipes runs every interception recipe exactly as printed: the
// README's shell blocks (eth1 replaced by gw's interface; for the IPv6
// note, iptables by ip6tables and table ip by table ip6) and deploy/'s
// scripts as shipped. Through each, from cli, TLS to an allowed name is
// relayed and to a denied one refused, while connections addressed to the
// gateway itself reach what listens there untouched: egressd's DNS
// forwarder over UDP and TCP, its admin endpoint (on either of gw's
// addresses), the host's sshd, and the same from gw's own processes. A
// recipe that redirects those too turns them into egressd connections that
// the policy denies (a "default deny" to port 53), so no access-log line
// may name a gateway address.
func TestRecipes(t *testing.T) {
	requireTools(t, "dig", "curl", "ssh", "iptables", "ip6tables", "nft")
	text, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(text)
	iptRedirect := readmeBlock(t, readme, "**iptables REDIRECT**")
	nftRedirect := readmeBlock(t, readme, "**nftables**")
	script := func(name string) string { return "sh ../deploy/" + name + " add" }
	deployEnv := func(mode string, more ...string) []string {
		return append([]string{"MODE=" + mode, "IFACE=" + gwCliIf, "PORT=" + recipePort, "MARK=0x100", "LOCAL=1"}, more...)
	}
	recipes := []recipe{
		{name: "README iptables REDIRECT", family: 4, local: true, shell: iptRedirect},
		{name: "README iptables TPROXY", family: 4, tproxy: true, shell: readmeBlock(t, readme, "**iptables TPROXY**")},
		{name: "README nftables REDIRECT", family: 4, local: true, shell: nftRedirect},
		{name: "README nftables TPROXY", family: 4, tproxy: true, shell: readmeBlock(t, readme, "**nftables TPROXY**")},
		{name: "README ip6tables REDIRECT", family: 6, local: true, shell: strings.ReplaceAll(iptRedirect, "iptables ", "ip6tables ")},
		{name: "README nftables ip6 REDIRECT", family: 6, local: true, shell: strings.ReplaceAll(nftRedirect, "table ip ", "table ip6 ")},
		{name: "iptables.sh redirect", family: 4, local: true, shell: script("iptables.sh"), env: deployEnv("redirect")},
		{name: "iptables.sh tproxy", family: 4, tproxy: true, shell: script("iptables.sh"), env: deployEnv("tproxy")},
		{name: "ip6tables.sh redirect", family: 6, local: true, shell: script("iptables.sh"), env: deployEnv("redirect", "IPTABLES=ip6tables")},
		{name: "ip6tables.sh tproxy", family: 6, tproxy: true, shell: script("iptables.sh"), env: deployEnv("tproxy", "IPTABLES=ip6tables")},
		{name: "nftables.sh redirect", family: 4, local: true, shell: script("nftables.sh"), env: deployEnv("redirect")},
		{name: "nftables.sh tproxy", family: 4, tproxy: true, shell: script("nftables.sh"), env: deployEnv("tproxy")},
		{name: "nftables.sh redirect ipv6", family: 6, local: true, shell: script("nftables.sh"), env: deployEnv("redirect")},
		{name: "nftables.sh tproxy ipv6", family: 6, tproxy: true, shell: script("nftables.sh"), env: deployEnv("tproxy")},
	}
	for _, r := range recipes {
		t.Run(r.name, func(t *testing.T) { testRecipe(t, r) })
	}
}

// readmeBlock is the first ```sh block after the line that holds marker,
// with the workloads' interface, eth1, replaced by gw's.
func readmeBlock(t *testing.T, readme, marker string) string {
	t.Helper()
	_, after, ok := strings.Cut(readme, marker)
	if !ok {
		t.Fatalf("README.md has no %q: the test must find each recipe it runs", marker)
	}
	_, after, ok = strings.Cut(after, "\n```sh\n")
	block, _, closed := strings.Cut(after, "\n```\n")
	if !ok || !closed {
		t.Fatalf("README.md has no ```sh block after %q", marker)
	}
	iface := regexp.MustCompile(`\beth1\b`)
	if !iface.MatchString(block) {
		t.Fatalf("README.md's block after %q names no eth1:\n%s", marker, block)
	}
	return iface.ReplaceAllString(block, gwCliIf)
}

// recipeWorld is a topology with, in gw, egressd (one transparent
// listener, its DNS forwarder on gw's address towards cli, its admin
// endpoint on all of gw's addresses) and sshd, for one address family.
type recipeWorld struct {
	*topology
	gwAddr, gwOther string // gw's address towards cli, and towards srv
	srvTLS          string // the TLS server, IP:443
	srvIP, qtype    string // what dig must answer for allowed.test
	tls             *tlsServer
	roots           *x509.CertPool
	log             *accessLog
}

func newRecipeWorld(t *testing.T, family int, tproxy bool) *recipeWorld {
	t.Helper()
	top := newTopology(t)
	cert, roots := serverCert(t)
	w := &recipeWorld{topology: top, roots: roots, gwAddr: gwCliAddr, gwOther: gwSrvAddr, srvIP: srvAddr, qtype: "A"}
	listen, admin := "0.0.0.0:"+recipePort, "0.0.0.0:9090"
	if family == 6 {
		w.gwAddr, w.gwOther, w.srvIP, w.qtype = gwCliAddr6, gwSrvAddr6, srvAddr6, "AAAA"
		listen, admin = "[::]:"+recipePort, "[::]:9090"
	}
	w.srvTLS = net.JoinHostPort(w.srvIP, "443")
	w.tls = startTLSServer(t, top.srv, cert, w.srvTLS)
	records := map[string][]string{"allowed.test.": {srvAddr, srvAddr6}, "x.ads.test.": {srvAddr, srvAddr6}}
	startDNS(t, top.gw, resolverAddr, records)
	startSSHD(t, top.gw, net.JoinHostPort(w.gwAddr, "22"))
	cfg := fmt.Sprintf(`listeners:
  - {name: transparent, mode: transparent, address: "%s", sni_destination: verify, tproxy: %t}
resolver: %s
mark: 0x100
admin: {address: "%s"}
log: {format: json}
dns: {address: "%s", upstreams: ["%s"]}
policy:
  enforce: true
  default: deny
  rules:
    - {name: web, action: allow, fqdn: [allowed.test], ports: [443]}
`, listen, tproxy, resolverAddr, admin, net.JoinHostPort(w.gwAddr, "53"), resolverAddr)
	_, w.log = startEgressdConfig(t, top.gw, cfg, 2)
	return w
}

// testRecipe installs the recipe in a world of its own and checks what a
// workload in cli, and a process in gw, see.
func testRecipe(t *testing.T, r recipe) {
	w := newRecipeWorld(t, r.family, r.tproxy)
	cmd := w.gw.command(context.Background(), "sh", "-ec", r.shell)
	cmd.Env = append(os.Environ(), r.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the recipe failed: %v\n%s\nrecipe:\n%s", err, out, r.shell)
	}

	w.checkGatewayReached(t, "workload", w.cli)
	w.checkGatewayReached(t, "gateway", w.gw)
	_, key, _ := sshKeys(t)
	if out, err := clientCommand(t, w.cli, "", "ssh", "-F", "/dev/null", "-i", key,
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "root@"+w.gwAddr, "echo", "ok"); err != nil || strings.TrimSpace(out) != "ok" {
		t.Errorf("workload: ssh root@%s echo ok: exit %v, output:\n%s", w.gwAddr, err, out)
	}

	// Through the gateway: intercepted and decided.
	w.checkTLS(t, "workload", w.cli, "allowed.test", "allow")
	accepts := w.tls.accepts.Load()
	w.checkTLS(t, "workload", w.cli, "x.ads.test", "deny")
	if n := w.tls.accepts.Load() - accepts; n != 0 {
		t.Errorf("the server accepted %d connections for a denied client, want 0", n)
	}
	if r.local {
		// Exempting local destinations must not let gw's own egress by.
		w.checkTLS(t, "gateway", w.gw, "x.ads.test", "deny")
	}

	// The probes of the gateway ended before the TLS connections began,
	// so any line of theirs is in by now.
	for _, l := range w.log.snapshot() {
		host, port, _ := net.SplitHostPort(l.Dst)
		if l.Msg == "conn" && (host == w.gwAddr || host == w.gwOther) {
			t.Errorf("egressd took a connection addressed to the gateway itself (port %s): %s", port, l.raw)
		}
	}
}

// checkGatewayReached: from ns, egressd's DNS forwarder answers on gw's
// address over UDP and TCP, and its admin endpoint on both of gw's
// addresses.
func (w *recipeWorld) checkGatewayReached(t *testing.T, who string, ns *netns) {
	t.Helper()
	for _, args := range [][]string{
		{"dig", "@" + w.gwAddr, "+time=3", "+tries=1", "+short", "allowed.test", w.qtype},
		{"dig", "@" + w.gwAddr, "+time=3", "+tries=1", "+short", "+tcp", "allowed.test", w.qtype},
	} {
		if out, err := clientCommand(t, ns, "", args[0], args[1:]...); err != nil || strings.TrimSpace(out) != w.srvIP {
			t.Errorf("%s: %s: want %s, got exit %v:\n%s", who, strings.Join(args, " "), w.srvIP, err, out)
		}
	}
	for _, a := range []string{w.gwAddr, w.gwOther} {
		u := "http://" + net.JoinHostPort(a, "9090") + "/healthz"
		if out, err := clientCommand(t, ns, "", "curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", u); err != nil || out != "200" {
			t.Errorf("%s: curl %s: want 200, got exit %v: %s", who, u, err, out)
		}
	}
}

// checkTLS: a TLS connection from ns to the server with SNI name is
// relayed (action allow) or refused with an access_denied alert (deny),
// and logged so.
func (w *recipeWorld) checkTLS(t *testing.T, who string, ns *netns, name, action string) {
	t.Helper()
	from := w.log.mark()
	c, err := ns.dial("", w.srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	src := c.LocalAddr().String()
	_, greeting, err := greet(c, &tls.Config{ServerName: name, RootCAs: w.roots})
	wantGreet := "hello sni=" + name + " local=" + w.srvTLS
	switch {
	case action == "allow" && (err != nil || !strings.HasPrefix(greeting, wantGreet)):
		t.Errorf("%s: TLS to %s for %s: %v, greeting %q, want %q", who, w.srvTLS, name, err, greeting, wantGreet)
	case action == "deny" && (err == nil || !strings.Contains(err.Error(), "access denied")):
		t.Errorf("%s: TLS to %s for %s: want an access denied alert, got %v", who, w.srvTLS, name, err)
	}
	wl := want{listener: "transparent", dst: w.srvTLS, fqdn: name, fqdnSource: "sni", action: action}
	if action == "allow" {
		wl.bytes = 1
	}
	w.log.expect(t, from, who+" TLS for "+name, bySrc(src), wl)
}

// snapshot is every line logged so far.
func (l *accessLog) snapshot() []accessLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]accessLine(nil), l.lines...)
}
