package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The chromium world: egressd in gw with a transparent listener (gw
// redirects every TCP connection from cli that is not addressed to gw
// itself) and an explicit one; an HTTPS page in srv; egressd's admin
// endpoint, whose metrics tell when every connection has been logged.
const (
	pageAddr = srvAddr + ":8443"
	// retryPageAddr serves the same page over TLS that takes P-256 only:
	// Chromium's key shares (X25519MLKEM768, X25519) get a
	// HelloRetryRequest, and its second hello passes egressd's watch.
	retryPageAddr = srvAddr + ":9443"
	pageMarker    = "page loaded through egressd"
	preconnected  = "www.allowed.test" // the page preconnects to it and never uses the connection
	mgmtAddr      = "127.0.0.1:9090"
)

const chromiumConfig = `listeners:
  - {name: transparent, mode: transparent, address: "0.0.0.0:` + portTransparent + `", sni_destination: verify}
  - {name: proxy, mode: explicit, address: "` + proxyAddr + `"}
resolver: ` + resolverAddr + `
admin: {address: "` + mgmtAddr + `"}
mark: 0x100
timeouts: {first_bytes: 300ms, client_hello: 5s, connect: 5s, idle: 15m}
log: {format: json}
policy:
  enforce: true
  default: deny
  rules:
    - {name: ads, action: deny, fqdn: ["*.ads.test"]}
    - {name: allowed, action: allow, fqdn: ["allowed.test", "` + preconnected + `"], ports: [8443, 9443]}
`

// chromiumWay is one way Chromium reaches the page through egressd.
type chromiumWay struct {
	name       string
	flags      []string
	listener   string
	fqdnSource string
	deniedErr  string // Chromium's net error for a page on a denied name
}

var chromiumWays = []chromiumWay{
	{name: "connect", flags: []string{"--proxy-server=http://" + proxyAddr},
		listener: "proxy", fqdnSource: "connect", deniedErr: "net::ERR_TUNNEL_CONNECTION_FAILED"},
	{name: "socks5", flags: []string{"--proxy-server=socks5://" + proxyAddr},
		listener: "proxy", fqdnSource: "socks", deniedErr: "net::ERR_SOCKS_CONNECTION_FAILED"},
	// cli has no DNS: Chromium maps the names itself, connects to srv, and
	// gw redirects the connection. The deny is a TLS access_denied alert.
	{name: "transparent", flags: []string{"--host-resolver-rules=MAP allowed.test " + srvAddr + ", MAP " + preconnected + " " + srvAddr +
		", MAP x.ads.test " + srvAddr},
		listener: "transparent", fqdnSource: "sni", deniedErr: "net::ERR_SSL_PROTOCOL_ERROR"},
}

// TestChromium loads a page with Debian's headless Chromium through egressd
// as an HTTP CONNECT proxy, as a SOCKS5 proxy and transparently, and a page
// on a denied name each way. A real browser preconnects and drops the
// connections it does not use (the page asks for one to preconnected;
// Chromium may open a spare one to the page's name too), retries a refused
// one, sends GREASE ECH and calls home on its own: each line of the page's
// names must be an allow by its rule (an unused connection too, never a
// deny) with ech false; the denied name's lines are denies by its rule; any
// other name Chromium asks for falls to the default deny.
func TestChromium(t *testing.T) {
	requireTools(t, "chromium", "iptables")
	w := newWorld(t, worldOptions{intercept: direct})
	startDNS(t, w.gw, resolverAddr, dnsRecords)
	page := startPage(t, w)
	retryPage := startPageAt(t, w, retryPageAddr, []tls.CurveID{tls.CurveP256}, false)
	_, log := startEgressdConfig(t, w.gw, chromiumConfig, 2)
	w.gw.exec(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-i", gwCliIf, "-p", "tcp", "!", "-d", gwCliAddr,
		"-j", "REDIRECT", "--to-ports", portTransparent)

	// Chromium trusts the test certificate by its key's hash, and only it.
	leaf, err := x509.ParseCertificate(credentials.cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	spki := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	trust := "--ignore-certificate-errors-spki-list=" + base64.StdEncoding.EncodeToString(spki[:])

	for _, way := range chromiumWays {
		t.Run(way.name, func(t *testing.T) {
			t.Run("allowed", func(t *testing.T) {
				from, hellos, echs := log.mark(), page.hellos.Load(), page.echs.Load()
				dom, stderr, err := runChromium(t, w, append(way.flags, trust), "https://allowed.test:8443/")
				if err != nil || !strings.Contains(dom, pageMarker) {
					t.Errorf("chromium via %s: %v; want the page's DOM with %q, got %q; stderr:\n%s", way.name, err, pageMarker, dom, stderr)
				}
				lines := settle(t, w, log, from)
				used := 0
				for _, l := range chromiumLines(t, lines, way, "allowed.test", preconnected) {
					want{dst: pageAddr, rule: rule("allowed"), action: "allow"}.check(t, l)
					if l.FQDN == "allowed.test" && l.BytesUp > 0 && l.BytesDown > 0 {
						used++
						want{protocol: []string{"tls"}}.check(t, l)
					}
				}
				if used == 0 {
					t.Errorf("no access-log line of allowed.test carried bytes both ways")
				}
				// The ech: false above means something only if Chromium
				// did send an ECH extension (GREASE: it has no ECH config).
				n, e := page.hellos.Load()-hellos, page.echs.Load()-echs
				if e == 0 {
					t.Errorf("none of the %d ClientHellos the page server got carried an ECH extension; want Chromium's GREASE ECH", n)
				}
				t.Logf("%s: %d access-log lines, %d of allowed.test with bytes; %d ClientHellos, %d with ECH", way.name, len(lines), used, n, e)
			})
			t.Run("HelloRetryRequest", func(t *testing.T) {
				from, retried := log.mark(), retryPage.retried.Load()
				dom, stderr, err := runChromium(t, w, append(way.flags, trust), "https://allowed.test:9443/")
				if err != nil || !strings.Contains(dom, pageMarker) {
					t.Errorf("chromium via %s, asked for a second hello: %v; want the page's DOM with %q, got %q; stderr:\n%s", way.name, err, pageMarker, dom, stderr)
				}
				if retryPage.retried.Load() == retried {
					t.Errorf("no request came on a connection with a HelloRetryRequest: the case proves nothing")
				}
				for _, l := range settle(t, w, log, from) {
					if l.FQDN == "allowed.test" && l.Action != "allow" {
						t.Errorf("allowed.test refused after a HelloRetryRequest: %+v", l)
					}
				}
			})
			t.Run("denied", func(t *testing.T) {
				from, hellos := log.mark(), page.hellos.Load()
				dom, stderr, err := runChromium(t, w, append(way.flags, trust), "https://x.ads.test:8443/")
				if err != nil || !strings.Contains(stderr, way.deniedErr) || strings.Contains(dom, pageMarker) {
					t.Errorf("chromium via %s to a denied name: %v; want %s; DOM %q; stderr:\n%s", way.name, err, way.deniedErr, dom, stderr)
				}
				lines := settle(t, w, log, from)
				for _, l := range chromiumLines(t, lines, way, "x.ads.test") {
					want{rule: rule("ads"), action: "deny"}.check(t, l)
				}
				if n := page.hellos.Load() - hellos; n != 0 {
					t.Errorf("the page server got %d ClientHellos for a denied name, want 0", n)
				}
				t.Logf("%s: %d access-log lines", way.name, len(lines))
			})
		})
	}
}

// chromiumLines checks what every line of one Chromium run has in common,
// listener and ech, that each line of names has the way's fqdn_source and
// that each other line is a default deny (Chromium calling home:
// update.googleapis.com, accounts.google.com, clients2.google.com) or
// action none (a SOCKS5 handshake abandoned before it named a target: no
// decision, and never a deny). It returns the
// lines of names, and fails the test if one of names has none.
func chromiumLines(t *testing.T, lines []accessLine, way chromiumWay, names ...string) []accessLine {
	t.Helper()
	var own []accessLine
	seen := make(map[string]bool)
	for _, l := range lines {
		t.Logf("access log: %s", l.raw)
		if l.ECH {
			t.Errorf("ech = true for Chromium, which has no ECH config and sends GREASE ECH: %s", l.raw)
		}
		if slices.Contains(names, l.FQDN) {
			want{listener: way.listener, fqdnSource: way.fqdnSource}.check(t, l)
			own = append(own, l)
			seen[l.FQDN] = true
			continue
		}
		if l.Action == "none" {
			if l.FQDN != "" {
				t.Errorf("action none with a name: %s", l.raw)
			}
			continue
		}
		want{listener: way.listener, rule: rule(""), action: "deny"}.check(t, l)
	}
	for _, name := range names {
		if !seen[name] {
			t.Errorf("no access-log line for %s", name)
		}
	}
	return own
}

// pageServer is the HTTPS page in srv (HTTP/2 and HTTP/1.1). "/" holds
// pageMarker, a preconnect link to preconnected and an image that the
// server sends only once the preconnect's ClientHello has arrived (or 10 s
// have passed), so that Chromium, which prints the DOM at the load event,
// has opened the unused connection by then. The server counts the
// ClientHellos it receives, those with an encrypted_client_hello extension
// and those for preconnected.
type pageServer struct {
	hellos, echs atomic.Int64
	retried      atomic.Int64 // requests on connections that had a HelloRetryRequest
	// waits: the image waits for the preconnect (the page at pageAddr;
	// the preconnect goes there, so another page's would wait in vain).
	waits bool

	mu           sync.Mutex
	preconnects  int
	preconnected chan struct{} // closed and replaced at every preconnect
}

const pageHTML = `<!doctype html><title>egressd</title>
<link rel=preconnect href="https://` + preconnected + `:8443">
<p>` + pageMarker + ` over %s</p><img src="/after-preconnect?n=%d" alt="">
`

// hello counts a ClientHello.
func (p *pageServer) hello(h *tls.ClientHelloInfo) {
	p.hellos.Add(1)
	if slices.Contains(h.Extensions, extensionECH) {
		p.echs.Add(1)
	}
	if h.ServerName == preconnected {
		p.mu.Lock()
		p.preconnects++
		close(p.preconnected)
		p.preconnected = make(chan struct{})
		p.mu.Unlock()
	}
}

// waitPreconnects waits until n ClientHellos for preconnected have arrived,
// for at most 10 s.
func (p *pageServer) waitPreconnects(ctx context.Context, n int) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		p.mu.Lock()
		got, changed := p.preconnects, p.preconnected
		p.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

func (p *pageServer) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if r.TLS != nil && r.TLS.HelloRetryRequest {
		p.retried.Add(1)
	}
	switch r.URL.Path {
	case "/":
		p.mu.Lock()
		next := p.preconnects + 1
		p.mu.Unlock()
		rw.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(rw, pageHTML, r.Proto, next)
	case "/after-preconnect":
		if p.waits {
			n, _ := strconv.Atoi(r.URL.Query().Get("n"))
			p.waitPreconnects(r.Context(), n)
		}
		rw.Header().Set("Content-Type", "image/svg+xml")
		io.WriteString(rw, `<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>`)
	default:
		http.NotFound(rw, r)
	}
}

// extensionECH is the encrypted_client_hello extension's code point
// (draft-ietf-tls-esni §5).
const extensionECH = 0xfe0d

func startPage(t *testing.T, w *world) *pageServer {
	t.Helper()
	return startPageAt(t, w, pageAddr, nil, true)
}

// startPageAt serves the page on addr, its TLS offering only curves (nil:
// crypto/tls's default); waits as pageServer says.
func startPageAt(t *testing.T, w *world, addr string, curves []tls.CurveID, waits bool) *pageServer {
	t.Helper()
	p := &pageServer{preconnected: make(chan struct{}), waits: waits}
	ln := w.srv.listen(t, addr)
	srv := &http.Server{
		Handler: p,
		TLSConfig: &tls.Config{
			Certificates:     []tls.Certificate{credentials.cert},
			CurvePreferences: curves,
			GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				p.hello(h)
				return nil, nil
			},
		},
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return p
}

// runChromium loads url in headless Chromium, in cli, with a fresh profile
// and QUIC off, and returns the DOM it prints (empty if the load failed)
// and its stderr (where a failed load's net error is).
func runChromium(t *testing.T, w *world, flags []string, url string) (dom, stderr string, err error) {
	t.Helper()
	return chromiumIn(t, w.cli, append(append([]string{"--disable-quic"}, flags...), "--dump-dom", url)...)
}

// chromiumIn runs headless Chromium in ns with a fresh profile and returns
// what it prints and its stderr.
func chromiumIn(t *testing.T, ns *netns, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args = append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir()}, args...)
	cmd := ns.command(ctx, "chromium", args...)
	var errOut strings.Builder
	cmd.Stderr = &errOut
	out, err := cmd.Output()
	if ctx.Err() != nil {
		err = fmt.Errorf("chromium timed out: %w", ctx.Err())
	}
	return string(out), errOut.String(), err
}

// settle waits until every connection of cli has ended, egressd has none
// open or in its handshake, and it has printed the line of every
// connection it counted; it returns the lines from from on. A connection
// of cli is over when its socket is in TIME_WAIT or gone: egressd has
// closed its side, so it had accepted the connection.
func settle(t *testing.T, w *world, log *accessLog, from int) []accessLine {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		open, err := openSockets(w.cli)
		var m map[string]float64
		if err == nil && open == 0 {
			m, err = adminMetrics(w)
		}
		if err == nil && open == 0 && m["egressd_active_connections"] == 0 && m["egressd_pending_handshakes"] == 0 {
			log.mu.Lock()
			lines := log.lines[min(from, len(log.lines)):]
			done := float64(len(log.lines)) == m["egressd_connections_total"]
			log.mu.Unlock()
			if done {
				return lines
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("egressd did not settle within 20s (cli sockets open: %d, metrics: %v, error: %v); it printed:\n%s",
				open, m, err, log.proc.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// openSockets counts ns's TCP sockets in any state but TIME_WAIT.
func openSockets(ns *netns) (int, error) {
	open := 0
	err := ns.do(func() error {
		for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			for _, line := range strings.Split(string(b), "\n")[1:] {
				// sl local_address rem_address st ...; st 06 is TIME_WAIT.
				if fields := strings.Fields(line); len(fields) > 3 && fields[3] != "06" {
					open++
				}
			}
		}
		return nil
	})
	return open, err
}

// adminMetrics reads egressd's /metrics in gw: each metric's value, summed
// over its labels.
func adminMetrics(w *world) (map[string]float64, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return w.gw.dial("", addr)
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + mgmtAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:strings.IndexAny(line, "{ ")]] += v
		}
	}
	io.Copy(io.Discard, resp.Body)
	return m, sc.Err()
}
