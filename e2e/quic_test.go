package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	iquic "github.com/egressd/egressd/internal/quic"
	"github.com/egressd/egressd/internal/quicproxy/quictest"
)

// The QUIC world: gw sends every UDP datagram from cli to port 443 (and
// every TCP connection) to egressd's listener with TPROXY, as docs/quic.md
// prints it; in srv an
// HTTP/3 server (quic-go) on srvAddr:443 and, on attackerAddr:443, a UDP
// socket that must never hear anything.
const (
	portQUIC   = recipePort
	quicMgmt   = "127.0.0.1:9091"
	quicBody   = 1 << 20
	quicConfig = `listeners:
  - {name: quic, mode: transparent, address: "0.0.0.0:` + portQUIC + `", tproxy: true, udp: true, sni_destination: verify}
  - {name: quic6, mode: transparent, address: "[::]:` + portQUIC + `", tproxy: true, udp: true, sni_destination: verify}
resolver: ` + resolverAddr + `
admin: {address: "` + quicMgmt + `"}
mark: 0x100
timeouts: {first_bytes: 300ms, client_hello: 5s, connect: 5s, idle: 2s}
log: {format: json}
policy:
  enforce: true
  default: deny
  rules:
    - {name: allowed, action: allow, fqdn: ["allowed.test", "*.allowed.test"], ports: [443, 8443], protocols: [quic]}
    - {name: ads, action: deny, fqdn: ["*.ads.test"]}
`
)

type quicWorld struct {
	*topology
	log      *accessLog
	h3       *h3Server
	attacker *net.UDPConn
}

// h3Server serves GET /body (quicBody deterministic bytes) and / (a page)
// over HTTP/3, and remembers the server names it was asked for.
type h3Server struct {
	mu    sync.Mutex
	names []string
}

func (s *h3Server) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.names...)
}

const quicPageMarker = "page loaded over HTTP/3 through egressd"

// quicRecipe is how gw intercepts: docs/quic.md's blocks, the iptables one
// also translated for IPv6 as the README's note says.
type quicRecipe int

const (
	quicIPTables quicRecipe = iota
	quicNFTables
	quicIP6Tables
)

func newQUICWorld(t *testing.T, recipe quicRecipe) *quicWorld {
	t.Helper()
	requireTools(t, "iptables")
	top := newTopology(t)
	cert, _ := serverCert(t)
	w := &quicWorld{topology: top, h3: &h3Server{}}
	records := maps.Clone(dnsRecords)
	for name, addrs := range dnsRecords6 {
		records[name] = append(slices.Clone(records[name]), addrs...)
	}
	startDNS(t, top.gw, resolverAddr, records)

	var pc, pc6, attacker *net.UDPConn
	if err := top.srv.do(func() (err error) {
		if pc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(srvAddr+":443"))); err != nil {
			return err
		}
		if pc6, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("["+srvAddr6+"]:443"))); err != nil {
			return err
		}
		attacker, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(attackerAddr+":443")))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	w.attacker = attacker
	t.Cleanup(func() { attacker.Close() })
	body := make([]byte, quicBody)
	rand.NewChaCha8([32]byte{3}).Read(body)
	mux := http.NewServeMux()
	mux.HandleFunc("/body", func(rw http.ResponseWriter, r *http.Request) { rw.Write(body) })
	mux.HandleFunc("/stream", func(rw http.ResponseWriter, r *http.Request) { // ?n=BYTES, for the benchmark
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		io.CopyN(rw, rand.NewChaCha8([32]byte{4}), n)
	})
	mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "<html><body><p>%s</p></body></html>", quicPageMarker)
	})
	srv := &http3.Server{Handler: mux, TLSConfig: http3.ConfigureTLSConfig(&tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			w.h3.mu.Lock()
			w.h3.names = append(w.h3.names, h.ServerName)
			w.h3.mu.Unlock()
			return nil, nil
		},
	})}
	go srv.Serve(pc)
	go srv.Serve(pc6)
	t.Cleanup(func() { srv.Close(); pc.Close(); pc6.Close() })

	_, w.log = startEgressdConfig(t, top.gw, quicConfig, 2)
	// The interception recipe of docs/quic.md, as printed.
	doc, err := os.ReadFile("../docs/quic.md")
	if err != nil {
		t.Fatal(err)
	}
	marker := "**iptables TPROXY with QUIC**"
	if recipe == quicNFTables {
		requireTools(t, "nft")
		marker = "**nftables TPROXY with QUIC**"
	}
	block := readmeBlock(t, string(doc), marker)
	if recipe == quicIP6Tables {
		requireTools(t, "ip6tables")
		block = strings.NewReplacer("iptables ", "ip6tables ", "--on-ip 0.0.0.0", "--on-ip ::",
			"ip rule ", "ip -6 rule ", "ip route add local 0.0.0.0/0", "ip -6 route add local ::/0").Replace(block)
	}
	top.gw.exec(t, "sh", "-ec", block)
	return w
}

// h3Client is an HTTP/3 client in cli: its one UDP socket lives there,
// and names map to addrs (cli has no DNS).
func (w *quicWorld) h3Client(t *testing.T, addrs map[string]string) (*http.Client, func()) {
	t.Helper()
	network := "udp4"
	for _, a := range addrs {
		if strings.Contains(a, ":") {
			network = "udp6"
		}
	}
	var pc *net.UDPConn
	if err := w.cli.do(func() (err error) { pc, err = net.ListenUDP(network, nil); return err }); err != nil {
		t.Fatal(err)
	}
	client, done := w.h3ClientConn(t, pc, addrs)
	return client, func() { done(); pc.Close() }
}

// h3ClientConn is an HTTP/3 client on pc, a socket in cli.
func (w *quicWorld) h3ClientConn(t *testing.T, pc *net.UDPConn, addrs map[string]string) (*http.Client, func()) {
	t.Helper()
	_, roots := serverCert(t)
	tr := &quic.Transport{Conn: pc}
	h3 := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		Dial: func(ctx context.Context, addr string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			host, port, _ := net.SplitHostPort(addr)
			if a, ok := addrs[host]; ok {
				host = a
			}
			ua, err := net.ResolveUDPAddr("udp", net.JoinHostPort(host, port))
			if err != nil {
				return nil, err
			}
			return tr.Dial(ctx, ua, tlsCfg, cfg)
		},
	}
	return &http.Client{Transport: h3, Timeout: 60 * time.Second}, func() { h3.Close(); tr.Close() }
}

// quicDial opens a QUIC connection from cli to addr naming name.
func (w *quicWorld) quicDial(t *testing.T, addr, name string) (*quic.Conn, string, error) {
	t.Helper()
	local := cliAddr + ":0"
	if netip.MustParseAddrPort(addr).Addr().Is6() {
		local = "[" + cliAddr6 + "]:0"
	}
	var pc *net.UDPConn
	if err := w.cli.do(func() (err error) {
		pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(local)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	tr := &quic.Transport{Conn: pc}
	t.Cleanup(func() { tr.Close() })
	_, roots := serverCert(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := tr.Dial(ctx, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)),
		&tls.Config{ServerName: name, RootCAs: roots, NextProtos: []string{http3.NextProtoH3}}, nil)
	return c, pc.LocalAddr().String(), err
}

// TestQUIC runs QUIC clients through egressd's UDP side, intercepted by
// iptables TPROXY: HTTP/3 to an allowed name, a denied name refused in
// QUIC, a ClientHello split and shuffled over three Initial packets, and a
// name spoofed to another address under sni_destination: verify.
func TestQUIC(t *testing.T) {
	w := newQUICWorld(t, quicIPTables)
	w.gw.countMarked(t, "-o", "to-srv", "-p", "udp", "--dport", "443")
	t.Run("http3 allowed", func(t *testing.T) { testH3Allowed(t, w, srvAddr) })
	t.Run("denied", func(t *testing.T) { testQUICDenied(t, w) })
	t.Run("split hello", func(t *testing.T) { testQUICSplit(t, w) })
	t.Run("spoofed sni", func(t *testing.T) { testQUICSpoofed(t, w) })
	t.Run("marked", func(t *testing.T) {
		if marked, unmarked := w.gw.markedCounts(t); marked == 0 || unmarked != 0 {
			t.Errorf("gw sent %d datagrams to srv:443 with egressd's mark and %d without; want all marked", marked, unmarked)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		m, err := quicMetrics(w)
		if err != nil {
			t.Fatal(err)
		}
		if m["egressd_quic_closes_total"] == 0 || m["egressd_connections_total"] == 0 {
			t.Errorf("metrics %v; want closes and connections counted", m)
		}
	})
}

// TestQUICIPv6: the UDP side of a listener on [::], intercepted with
// ip6tables TPROXY: an HTTP/3 GET to srv's IPv6 address, and a denied name
// refused.
func TestQUICIPv6(t *testing.T) {
	w := newQUICWorld(t, quicIP6Tables)
	testH3Allowed(t, w, srvAddr6)
	from := w.log.mark()
	_, src, err := w.quicDial(t, "["+srvAddr6+"]:443", "x.ads.test")
	var te *quic.TransportError
	if !errors.As(err, &te) || !te.Remote || te.ErrorCode != iquic.CodeAccessDenied {
		t.Fatalf("dial x.ads.test over IPv6: %v; want the remote CRYPTO_ERROR 0x131", err)
	}
	w.log.expect(t, from, "the denied IPv6 flow", bySrc(src), want{
		listener: "quic6", dst: "[" + srvAddr6 + "]:443", fqdn: "x.ads.test", protocol: []string{"quic"}, rule: rule("ads"), action: "deny",
	})
}

// TestQUICNftables: the nftables recipe carries an HTTP/3 GET too.
func TestQUICNftables(t *testing.T) {
	w := newQUICWorld(t, quicNFTables)
	testH3Allowed(t, w, srvAddr)
}

// testH3Allowed GETs 1 MiB over HTTP/3 from allowed.test at addr (an IPv4
// or IPv6 address of srv).
func testH3Allowed(t *testing.T, w *quicWorld, addr string) {
	from := w.log.mark()
	client, done := w.h3Client(t, map[string]string{"allowed.test": addr})
	start := time.Now()
	resp, err := client.Get("https://allowed.test/body")
	if err != nil {
		done()
		t.Fatalf("HTTP/3 GET through egressd: %v", err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	elapsed := time.Since(start)
	done() // closes the connection: the flow goes idle
	body := make([]byte, quicBody)
	rand.NewChaCha8([32]byte{3}).Read(body)
	if err != nil || resp.StatusCode != 200 || sha256.Sum256(got) != sha256.Sum256(body) {
		t.Fatalf("GET /body: status %d, %d bytes, %v; want 200 and %d bytes with sha256 %x", resp.StatusCode, len(got), err, quicBody, sha256.Sum256(body))
	}
	t.Logf("HTTP/3 GET of %d bytes in %v (%s)", len(got), elapsed.Round(time.Millisecond), resp.Proto)
	listener, dst := "quic", srvAddr+":443"
	if strings.Contains(addr, ":") {
		listener, dst = "quic6", "["+addr+"]:443"
	}
	line := w.log.expect(t, from, "the HTTP/3 flow", byListener(listener), want{
		listener: listener, dst: dst, fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"quic"},
		rule: rule("allowed"), action: "allow", reasonHas: "closed: idle timeout",
	})
	var counts struct {
		PacketsUp   int64           `json:"packets_up"`
		PacketsDown int64           `json:"packets_down"`
		ALPN        json.RawMessage `json:"alpn"`
	}
	json.Unmarshal([]byte(line.raw), &counts)
	if line.BytesDown < quicBody || line.BytesUp == 0 || counts.PacketsUp == 0 || counts.PacketsDown < quicBody/1500 || string(counts.ALPN) != `["h3"]` {
		t.Errorf("flow line: bytes %d up, %d down, packets %d up, %d down, alpn %s; want over %d bytes down, datagrams both ways, alpn [\"h3\"]",
			line.BytesUp, line.BytesDown, counts.PacketsUp, counts.PacketsDown, counts.ALPN, quicBody)
	}
}

func testQUICDenied(t *testing.T, w *quicWorld) {
	from := w.log.mark()
	start := time.Now()
	_, src, err := w.quicDial(t, srvAddr+":443", "x.ads.test")
	elapsed := time.Since(start)
	var te *quic.TransportError
	if !errors.As(err, &te) || !te.Remote || te.ErrorCode != iquic.CodeAccessDenied {
		t.Fatalf("dial x.ads.test: %v; want the remote CRYPTO_ERROR 0x131 (access_denied)", err)
	}
	t.Logf("denied client refused after %v: %v", elapsed.Round(time.Microsecond), err)
	if elapsed > 10*time.Second {
		t.Errorf("the refusal took %v", elapsed)
	}
	w.log.expect(t, from, "the denied flow", bySrc(src), want{
		listener: "quic", dst: srvAddr + ":443", fqdn: "x.ads.test", fqdnSource: "sni", protocol: []string{"quic"},
		rule: rule("ads"), action: "deny",
	})
	for _, n := range w.h3.seen() {
		if n == "x.ads.test" {
			t.Errorf("the server got a ClientHello for the denied name")
		}
	}
}

// testQUICSplit sends ClientHellos split over three Initial packets, CRYPTO
// frames shuffled among PINGs, from a plain UDP socket in cli: the allowed
// name reaches the server (whose ServerHello comes back), the denied one
// gets the CONNECTION_CLOSE.
func testQUICSplit(t *testing.T, w *quicWorld) {
	for i, tc := range []struct {
		name string
		v    iquic.Version
	}{{"allowed.test", iquic.Version1}, {"x.ads.test", iquic.Version1}, {"allowed.test", iquic.Version2}} {
		t.Run(tc.name+" "+tc.v.String(), func(t *testing.T) {
			var pc *net.UDPConn
			if err := w.cli.do(func() (err error) {
				pc, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(srvAddr+":443")))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			from := w.log.mark()
			dcid, scid := []byte(fmt.Sprintf("split-hello-%04d", i)), []byte("cscid")
			hello, err := quictest.Hello(tc.name, scid)
			if err != nil {
				t.Fatal(err)
			}
			c, err := quictest.NewClient(tc.v, dcid, scid)
			if err != nil {
				t.Fatal(err)
			}
			ds, err := c.Initials(hello, 3, rand.New(rand.NewPCG(uint64(i), 42)))
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range ds {
				pc.Write(d)
			}
			// The server may acknowledge a first datagram on its own before
			// it answers the hello: read on.
			var frames []iquic.Frame
			serverHello := false
			buf := make([]byte, 65536)
			for range 5 {
				pc.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := pc.Read(buf)
				if err != nil {
					t.Fatalf("no answer: %v", err)
				}
				f, err := quictest.ReadServerInitial(tc.v, dcid, buf[:n])
				if err != nil {
					t.Fatalf("answer: %v", err)
				}
				frames = append(frames, f...)
				for _, f := range frames {
					serverHello = serverHello || f.Type == iquic.FrameCrypto && f.Offset == 0 && len(f.Data) > 0 && f.Data[0] == 2
				}
				if serverHello || tc.name != "allowed.test" {
					break
				}
			}
			wantLine := want{listener: "quic", fqdn: tc.name, fqdnSource: "sni", protocol: []string{"quic"}}
			if tc.name == "allowed.test" {
				if !serverHello {
					t.Errorf("answer frames %+v; want the server's ServerHello", frames)
				}
				wantLine.action, wantLine.rule = "allow", rule("allowed")
			} else {
				if len(frames) == 0 || frames[0].Type != iquic.FrameConnectionClose || frames[0].ErrorCode != iquic.CodeAccessDenied {
					t.Errorf("answer frames %+v; want CONNECTION_CLOSE 0x131", frames)
				}
				wantLine.action, wantLine.rule = "deny", rule("ads")
			}
			w.log.expect(t, from, "the split hello's flow", bySrc(pc.LocalAddr().String()), wantLine)
		})
	}
}

// testQUICSpoofed: a client that names allowed.test to another address is
// refused under sni_destination: verify, and that address hears nothing.
func testQUICSpoofed(t *testing.T, w *quicWorld) {
	from := w.log.mark()
	_, src, err := w.quicDial(t, attackerAddr+":443", "allowed.test")
	var te *quic.TransportError
	if !errors.As(err, &te) || !te.Remote || te.ErrorCode != iquic.CodeAccessDenied {
		t.Fatalf("dial allowed.test at %s: %v; want the remote CRYPTO_ERROR 0x131", attackerAddr, err)
	}
	w.log.expect(t, from, "the spoofed flow", bySrc(src), want{
		listener: "quic", dst: attackerAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"quic"},
		action: "deny", reasonHas: "spoofed name",
	})
	w.attacker.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := w.attacker.ReadFrom(make([]byte, 2048)); err == nil {
		t.Errorf("the spoofed address got a %d-byte datagram", n)
	}
}

// quicMetrics reads egressd's /metrics in gw, summed over labels.
func quicMetrics(w *quicWorld) (map[string]float64, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return w.gw.dial("", addr)
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + quicMgmt + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	m := make(map[string]float64)
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		i := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[i+1:], &v); err == nil {
			m[line[:strings.IndexAny(line, "{ ")]] += v
		}
	}
	return m, err
}

// TestQUICChromium loads a page with Debian's headless Chromium forced
// onto QUIC (--origin-to-force-quic-on) through the UDP side: srv serves
// it over HTTP/3 only, so the page comes over QUIC or not at all. Chromium
// splits its post-quantum ClientHello over Initial packets and shuffles
// its CRYPTO frames. A denied name is refused in QUIC.
func TestQUICChromium(t *testing.T) {
	requireTools(t, "chromium")
	w := newQUICWorld(t, quicIPTables)
	leaf, err := x509.ParseCertificate(credentials.cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	spki := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	flags := []string{
		"--origin-to-force-quic-on=allowed.test:443,x.ads.test:443",
		"--host-resolver-rules=MAP allowed.test " + srvAddr + ", MAP x.ads.test " + srvAddr,
		"--ignore-certificate-errors-spki-list=" + base64.StdEncoding.EncodeToString(spki[:]),
	}
	t.Run("allowed", func(t *testing.T) {
		from := w.log.mark()
		dom, stderr, err := runQUICChromium(t, w, flags, "https://allowed.test/")
		if err != nil || !strings.Contains(dom, quicPageMarker) {
			t.Fatalf("chromium: %v; want the page's DOM with %q, got %q; stderr:\n%s", err, quicPageMarker, dom, stderr)
		}
		w.log.expect(t, from, "chromium's QUIC flow", func(l accessLine) bool { return l.FQDN == "allowed.test" }, want{
			listener: "quic", dst: srvAddr + ":443", fqdnSource: "sni", protocol: []string{"quic"}, rule: rule("allowed"), action: "allow",
		})
	})
	t.Run("denied", func(t *testing.T) {
		from := w.log.mark()
		dom, stderr, _ := runQUICChromium(t, w, flags, "https://x.ads.test/")
		if strings.Contains(dom, quicPageMarker) {
			t.Fatalf("chromium loaded the page of a denied name")
		}
		t.Logf("chromium on a denied name: %s", firstLine(stderr, "net::"))
		w.log.expect(t, from, "chromium's denied QUIC flow", func(l accessLine) bool { return l.FQDN == "x.ads.test" }, want{
			listener: "quic", fqdnSource: "sni", protocol: []string{"quic"}, rule: rule("ads"), action: "deny",
		})
	})
}

// runQUICChromium loads url in headless Chromium in cli, QUIC allowed.
func runQUICChromium(t *testing.T, w *quicWorld, flags []string, url string) (dom, stderr string, err error) {
	t.Helper()
	return chromiumIn(t, w.cli, slices.Concat(flags, []string{"--dump-dom", url})...)
}

// firstLine is the first line of s that contains sub, "" if none.
func firstLine(s, sub string) string {
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}
