package gateway

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/socks5"
)

// matching selects the first log line with all the given fields.
func matching(fields map[string]any) func(entry) bool {
	return func(e entry) bool {
		for k, v := range fields {
			if fmt.Sprint(e[k]) != fmt.Sprint(v) {
				return false
			}
		}
		return true
	}
}

func get(t *testing.T, c *http.Client, u string) (int, string, error) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// TestExplicitGoClients drives Go's net/http through the explicit listener
// as an HTTP proxy (CONNECT for https, forwarding for http) and as a SOCKS5
// proxy (domain names), allowed and denied.
func TestExplicitGoClients(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	httpProxy := "http://" + w.proxy.String()
	socksProxy := "socks5://" + w.proxy.String() // Go sends the name (socks5h behaviour)
	tests := []struct {
		name, proxy, url string
		wantStatus       int
		wantBody         string
		log              map[string]any
	}{
		{"connect allowed", httpProxy, fmt.Sprintf("https://good.test:%d/x", w.https.Port()), 200, "host=good.test",
			map[string]any{"fqdn": "good.test", "fqdn_source": "connect", "protocol": "tls", "action": "allow", "rule": "good", "dst": w.https}},
		{"plain allowed", httpProxy, fmt.Sprintf("http://api.good.test:%d/p", w.plain.Port()), 200, "path=/p proxy-authorization=\"\"",
			map[string]any{"fqdn": "api.good.test", "fqdn_source": "host", "protocol": "http", "action": "allow", "rule": "good", "dst": w.plain}},
		{"plain ip literal allowed", httpProxy, fmt.Sprintf("http://%s/ip", w.plain2), 200, "path=/ip",
			map[string]any{"fqdn": "", "fqdn_source": "none", "action": "allow", "rule": "lit", "dst": w.plain2}},
		{"socks allowed", socksProxy, fmt.Sprintf("https://good.test:%d/s", w.https.Port()), 200, "path=/s",
			map[string]any{"fqdn": "good.test", "fqdn_source": "socks", "protocol": "tls", "action": "allow", "rule": "good"}},
		{"socks plain http", socksProxy, fmt.Sprintf("http://api.good.test:%d/sp", w.plain.Port()), 200, "path=/sp",
			map[string]any{"fqdn": "api.good.test", "fqdn_source": "socks", "protocol": "http", "action": "allow"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body, err := get(t, client(t, tt.proxy), tt.url)
			if err != nil || code != tt.wantStatus || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("GET %s via %s = %d %q %v; want %d and %q", tt.url, tt.proxy, code, body, err, tt.wantStatus, tt.wantBody)
			}
			e := w.waitLog(matching(tt.log))
			w.want(e, map[string]any{"listener": "proxy", "user": "", "enforced": true})
		})
	}

	denied := []struct {
		name, proxy, url, errHas string
		log                      map[string]any
	}{
		{"connect deny rule", httpProxy, fmt.Sprintf("https://x.ads.test:%d/", w.https.Port()), "Forbidden",
			map[string]any{"fqdn": "x.ads.test", "fqdn_source": "connect", "action": "deny", "rule": "ads"}},
		{"connect default", httpProxy, fmt.Sprintf("https://other.test:%d/", w.https.Port()), "Forbidden",
			map[string]any{"fqdn": "other.test", "action": "deny", "rule": "", "reason": "no rule matched: default deny"}},
		{"connect restricted answer", httpProxy, fmt.Sprintf("https://nodest.test:%d/", w.https.Port()), "Forbidden",
			map[string]any{"fqdn": "nodest.test", "action": "deny", "rule": "nodest"}},
		{"socks deny", socksProxy, fmt.Sprintf("https://x.ads.test:%d/", w.https.Port()), "not allowed",
			map[string]any{"fqdn": "x.ads.test", "fqdn_source": "socks", "action": "deny", "rule": "ads"}},
	}
	for _, tt := range denied {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := get(t, client(t, tt.proxy), tt.url)
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("GET %s via %s: err %v, want one containing %q", tt.url, tt.proxy, err, tt.errHas)
			}
			w.waitLog(matching(tt.log))
		})
	}

	t.Run("plain denied", func(t *testing.T) {
		code, body, err := get(t, client(t, httpProxy), fmt.Sprintf("http://x.ads.test:%d/", w.plain.Port()))
		if err != nil || code != 403 || body != "egressd: denied by rule \"ads\"\n" {
			t.Fatalf("GET = %d %q %v, want 403 naming the rule", code, body, err)
		}
		w.waitLog(matching(map[string]any{"fqdn": "x.ads.test", "fqdn_source": "host", "action": "deny", "rule": "ads", "protocol": "http"}))
	})
}

// rawProxy dials the proxy and returns the connection and a reader on it.
func rawProxy(t *testing.T, addr netip.AddrPort) (*net.TCPConn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func readResponse(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	if method == "CONNECT" && resp.StatusCode == 200 {
		return resp, "" // the tunnel follows; net/http's reader would wait for EOF
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// TestExplicitKeepAlive: two requests on one kept-alive connection are
// decided one by one: two hosts allowed, then a third denied; hop-by-hop
// headers and Proxy-Authorization do not reach the server.
func TestExplicitKeepAlive(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	c, br := rawProxy(t, w.proxy)
	for i, host := range []string{"good.test", "api.good.test"} {
		fmt.Fprintf(c, "GET http://%s:%d/r%d HTTP/1.1\r\nHost: %s\r\nProxy-Connection: keep-alive\r\nConnection: X-Secret\r\nX-Secret: 1\r\nProxy-Authorization: Basic eDp5\r\n\r\n",
			host, w.plain.Port(), i, host)
		resp, body := readResponse(t, br, "GET")
		want := fmt.Sprintf(`host=%s:%d path=/r%d proxy-authorization="" proxy-connection="" x-secret=""`, host, w.plain.Port(), i)
		if resp.StatusCode != 200 || !strings.HasPrefix(body, want) || resp.Close {
			t.Fatalf("request %d: %d close=%v %q, want 200 keep-alive %q", i, resp.StatusCode, resp.Close, body, want)
		}
		w.waitLog(matching(map[string]any{"fqdn": host, "action": "allow", "src": c.LocalAddr().String()}))
	}
	// A body, chunked, is passed on whole.
	fmt.Fprintf(c, "POST http://good.test:%d/post HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", w.plain.Port())
	if resp, body := readResponse(t, br, "POST"); resp.StatusCode != 200 || !strings.Contains(body, `body="abcde"`) {
		t.Fatalf("chunked POST: %d %q", resp.StatusCode, body)
	}
	fmt.Fprintf(c, "GET http://x.ads.test:%d/ HTTP/1.1\r\n\r\n", w.plain.Port())
	if resp, body := readResponse(t, br, "GET"); resp.StatusCode != 403 || !strings.Contains(body, `"ads"`) {
		t.Fatalf("third request: %d %q, want 403 by ads", resp.StatusCode, body)
	}
	w.waitLog(matching(map[string]any{"fqdn": "x.ads.test", "action": "deny", "src": c.LocalAddr().String()}))
}

// TestExplicitAuth: with users configured, HTTP clients without valid
// Basic credentials get 407 and SOCKS5 clients a failed RFC 1929 exchange;
// a rule with users matches the authenticated user; the user is logged.
func TestExplicitAuth(t *testing.T) {
	w := newProxyWorld(t, `users:
  - {name: ci-runner, password_hash: "`+s3cretHash+`"}`, "", true)
	url := fmt.Sprintf("http://good.test:%d/", w.plain.Port())
	for _, tt := range []struct {
		name, proxy string
		want        int
	}{
		{"no credentials", "http://" + w.proxy.String(), 407},
		{"wrong password", "http://ci-runner:nope@" + w.proxy.String(), 407},
		{"unknown user", "http://ghost:s3cret@" + w.proxy.String(), 407},
		{"good", "http://ci-runner:s3cret@" + w.proxy.String(), 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, body, err := get(t, client(t, tt.proxy), url)
			if err != nil || code != tt.want {
				t.Fatalf("GET via %s = %d %q %v, want %d", tt.proxy, code, body, err, tt.want)
			}
			if tt.want == 200 {
				w.want(w.waitLog(matching(map[string]any{"action": "allow", "fqdn": "good.test"})), map[string]any{"user": "ci-runner"})
				if !strings.Contains(body, `proxy-authorization=""`) {
					t.Errorf("Proxy-Authorization reached the server: %q", body)
				}
			}
		})
	}
	t.Run("connect 407", func(t *testing.T) {
		_, _, err := get(t, client(t, "http://"+w.proxy.String()), fmt.Sprintf("https://good.test:%d/", w.https.Port()))
		if err == nil || !strings.Contains(err.Error(), "Proxy Authentication Required") {
			t.Fatalf("CONNECT without credentials: %v, want 407", err)
		}
	})
	t.Run("connect with credentials", func(t *testing.T) {
		code, _, err := get(t, client(t, "http://ci-runner:s3cret@"+w.proxy.String()), fmt.Sprintf("https://good.test:%d/", w.https.Port()))
		if err != nil || code != 200 {
			t.Fatalf("CONNECT with credentials: %d %v", code, err)
		}
		w.want(w.waitLog(matching(map[string]any{"fqdn_source": "connect", "action": "allow"})), map[string]any{"user": "ci-runner"})
	})
	t.Run("socks good", func(t *testing.T) {
		code, _, err := get(t, client(t, "socks5://ci-runner:s3cret@"+w.proxy.String()), fmt.Sprintf("https://good.test:%d/", w.https.Port()))
		if err != nil || code != 200 {
			t.Fatalf("SOCKS5 with credentials: %d %v", code, err)
		}
		w.want(w.waitLog(matching(map[string]any{"fqdn_source": "socks", "action": "allow"})), map[string]any{"user": "ci-runner"})
	})
	t.Run("socks wrong password", func(t *testing.T) {
		_, _, err := get(t, client(t, "socks5://ci-runner:bad@"+w.proxy.String()), fmt.Sprintf("https://good.test:%d/", w.https.Port()))
		if err == nil {
			t.Fatal("SOCKS5 with a wrong password succeeded")
		}
		w.waitLog(matching(map[string]any{"reason": `socks5: authentication failed for user "ci-runner"`}))
	})
	t.Run("socks no auth offered", func(t *testing.T) {
		c, br := rawProxy(t, w.proxy)
		c.Write([]byte{5, 1, 0})
		got, _ := io.ReadAll(br)
		if string(got) != "\x05\xff" {
			t.Fatalf("greeting with only no-auth: got %x, want 05ff", got)
		}
	})
}

// TestExplicitUsersRule: a rule with users selects the authenticated
// user: intern is denied what ci-runner may reach.
func TestExplicitUsersRule(t *testing.T) {
	w := newProxyWorld(t, `users:
  - {name: ci-runner, password_hash: "`+s3cretHash+`"}
  - {name: intern, password_hash: "`+s3cretHash+`"}`,
		`    - {name: no-interns, action: deny, users: [intern], fqdn: ["*.good.test"]}`, true)
	url := fmt.Sprintf("http://api.good.test:%d/", w.plain.Port())
	for _, tt := range []struct {
		user string
		want int
		rule string
	}{
		{"ci-runner", 200, "good"},
		{"intern", 403, "no-interns"},
	} {
		code, _, err := get(t, client(t, "http://"+tt.user+":s3cret@"+w.proxy.String()), url)
		if err != nil || code != tt.want {
			t.Errorf("GET as %s = %d %v, want %d", tt.user, code, err, tt.want)
		}
		w.waitLog(matching(map[string]any{"user": tt.user, "rule": tt.rule}))
	}
}

// TestExplicitTunnelSNI: a TLS ClientHello inside a CONNECT tunnel whose
// SNI differs from the CONNECT host is refused with tunnel_sni: match and
// relayed (and logged) with tunnel_sni: log.
func TestExplicitTunnelSNI(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	for _, tt := range []struct {
		listener string
		proxy    netip.AddrPort
		ok       bool
		reason   string
	}{
		{"proxy", w.proxy, false, `TLS server name "other.test" inside the tunnel differs from the requested good.test (tunnel_sni: match)`},
		{"proxylog", w.proxyLog, true, `(tunnel_sni: log)`},
		{"proxyignore", w.proxyIgnore, true, `matched rule "good"`},
	} {
		t.Run(tt.listener, func(t *testing.T) {
			c, br := rawProxy(t, tt.proxy)
			fmt.Fprintf(c, "CONNECT good.test:%d HTTP/1.1\r\n\r\n", w.echo.Port())
			if resp, _ := readResponse(t, br, "CONNECT"); resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %d", resp.StatusCode)
			}
			tc := tls.Client(c, &tls.Config{ServerName: "other.test", InsecureSkipVerify: true})
			err := tc.Handshake()
			if tt.ok && err != nil {
				t.Fatalf("handshake with tunnel_sni log: %v", err)
			}
			if !tt.ok && (err == nil || !strings.Contains(err.Error(), "access denied")) {
				t.Fatalf("handshake with tunnel_sni match: %v, want access denied", err)
			}
			tc.Close()
			e := w.waitLog(bySrcPort(c))
			proto := "tls"
			if tt.listener == "proxyignore" {
				proto = "unknown" // not looked at
			}
			w.want(e, map[string]any{"listener": tt.listener, "fqdn": "good.test", "protocol": proto})
			if r := e["reason"].(string); !strings.Contains(r, tt.reason) {
				t.Errorf("reason %q, want it to contain %q", r, tt.reason)
			}
		})
	}
	t.Run("matching SNI", func(t *testing.T) {
		c, br := rawProxy(t, w.proxy)
		fmt.Fprintf(c, "CONNECT GOOD.test.:%d HTTP/1.1\r\n\r\n", w.echo.Port())
		if resp, _ := readResponse(t, br, "CONNECT"); resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %d", resp.StatusCode)
		}
		tc := tls.Client(c, &tls.Config{ServerName: "good.test", InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("handshake: %v", err)
		}
		tc.Close()
		e := w.waitLog(bySrcPort(c))
		w.want(e, map[string]any{"action": "allow", "protocol": "tls"})
		if r := e["reason"].(string); strings.Contains(r, "tunnel") {
			t.Errorf("reason %q mentions the tunnel for a matching name", r)
		}
	})
	t.Run("http host in tunnel", func(t *testing.T) {
		c, br := rawProxy(t, w.proxy)
		fmt.Fprintf(c, "CONNECT good.test:%d HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: other.test\r\n\r\n", w.plain.Port())
		if resp, _ := readResponse(t, br, "CONNECT"); resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %d", resp.StatusCode)
		}
		if resp, _ := readResponse(t, br, "GET"); resp.StatusCode != 403 {
			t.Fatalf("request with another Host inside the tunnel: %d, want 403", resp.StatusCode)
		}
		w.want(w.waitLog(bySrcPort(c)), map[string]any{"action": "deny", "protocol": "http"})
	})
}

// TestExplicitBadInput: each malformed or oversized handshake gets its
// protocol's error, is logged, and a well-behaved client is served
// meanwhile.
func TestExplicitBadInput(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	stalled, _ := rawProxy(t, w.proxy)
	stalled.Write([]byte("CONNECT good.te"))
	tests := []struct {
		name   string
		send   []byte
		want   string // prefix of what the client reads
		reason string
	}{
		{"long request line", []byte("GET http://good.test/" + strings.Repeat("a", 9000) + " HTTP/1.1\r\n\r\n"), "HTTP/1.1 414 ", "request line too long"},
		{"large head", []byte("CONNECT good.test:443 HTTP/1.1\r\n" + strings.Repeat("X-A: b\r\n", 5000) + "\r\n"), "HTTP/1.1 431 ", "request head too large"},
		{"connect without port", []byte("CONNECT good.test HTTP/1.1\r\n\r\n"), "HTTP/1.1 400 ", "want host:port"},
		{"connect odd ip", []byte("CONNECT 0x7f.1:443 HTTP/1.1\r\n\r\n"), "HTTP/1.1 400 ", "dotted-decimal"},
		{"origin form", []byte("GET / HTTP/1.1\r\nHost: good.test\r\n\r\n"), "HTTP/1.1 400 ", "not a proxy request"},
		{"stall", []byte("CONNECT good.test:443 HTTP/1.1\r\nHost:"), "HTTP/1.1 408 ", "handshake timeout"},
		{"socks no acceptable method", []byte{5, 1, 2}, "\x05\xff", "no acceptable method"},
		{"socks bind", []byte{5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80}, "\x05\x00\x05\x07", "command BIND not supported"},
		{"socks udp", []byte{5, 1, 0, 5, 3, 0, 1, 127, 0, 0, 1, 0, 80}, "\x05\x00\x05\x07", "command UDP ASSOCIATE"},
		{"socks bad atyp", []byte{5, 1, 0, 5, 1, 0, 9, 0, 80}, "\x05\x00\x05\x08", "unknown address type"},
		{"socks stall", []byte{5, 1, 0, 5, 1, 0, 3, 20, 'g'}, "\x05\x00", "handshake timeout"},
		{"socks odd ip name", append([]byte{5, 1, 0, 5, 1, 0, 3, 5}, "127.1\x00\x50"...), "\x05\x00\x05\x02", "dotted-decimal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, br := rawProxy(t, w.proxy)
			start := time.Now()
			c.Write(tt.send)
			got, _ := io.ReadAll(br)
			c.Close()
			if !strings.HasPrefix(string(got), tt.want) {
				t.Fatalf("got %q, want it to start with %q", got[:min(len(got), 80)], tt.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("answer took %v, want it within the 1s client_hello timeout (bound 5s)", d)
			}
			e := w.waitLog(bySrcPort(c))
			w.want(e, map[string]any{"action": "deny", "enforced": true})
			if r := e["reason"].(string); !strings.Contains(r, tt.reason) {
				t.Errorf("reason %q, want it to contain %q", r, tt.reason)
			}
		})
	}
	// The stalled client harmed nobody; now it has been answered too.
	code, _, err := get(t, client(t, "http://"+w.proxy.String()), fmt.Sprintf("http://good.test:%d/", w.plain.Port()))
	if err != nil || code != 200 {
		t.Errorf("a good client next to a stalled one: %d %v", code, err)
	}
	stalled.SetDeadline(time.Now().Add(5 * time.Second))
	if got, _ := io.ReadAll(stalled); !strings.HasPrefix(string(got), "HTTP/1.1 408 ") {
		t.Errorf("stalled client got %q, want 408", got)
	}
}

// TestExplicitUpstreamDown: a refused dial is 502 (HTTP) and 0x05 (SOCKS).
func TestExplicitUpstreamDown(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	port := closedPort(t)
	c, br := rawProxy(t, w.proxy)
	fmt.Fprintf(c, "CONNECT good.test:%d HTTP/1.1\r\n\r\n", port)
	if resp, _ := readResponse(t, br, "CONNECT"); resp.StatusCode != 502 {
		t.Errorf("CONNECT to a closed port: %d, want 502", resp.StatusCode)
	}
	w.want(w.waitLog(bySrcPort(c)), map[string]any{"action": "allow", "rule": "good"})

	c, br = rawProxy(t, w.proxy)
	c.Write(socks5.AppendRequest([]byte{5, 1, 0}, socks5.Request{Cmd: socks5.CmdConnect, Domain: "good.test", Port: port}))
	got, _ := io.ReadAll(br)
	if len(got) < 4 || got[3] != socks5.ReplyConnectionRefused {
		t.Errorf("SOCKS5 CONNECT to a closed port: reply %x, want code 05", got)
	}
	if e := w.waitLog(bySrcPort(c)); !strings.Contains(e["reason"].(string), "upstream failed") {
		t.Errorf("reason %v", e["reason"])
	}
	// A name the policy allows that does not resolve: 502 and 0x04, not a
	// policy refusal.
	c, br = rawProxy(t, w.proxy)
	fmt.Fprintf(c, "CONNECT nxdomain.good.test:443 HTTP/1.1\r\n\r\n")
	if resp, body := readResponse(t, br, "CONNECT"); resp.StatusCode != 502 || !strings.Contains(body, "cannot resolve") {
		t.Errorf("CONNECT to an unresolvable allowed name: %d %q, want 502", resp.StatusCode, body)
	}
	if e := w.waitLog(bySrcPort(c)); !strings.Contains(e["reason"].(string), "NXDOMAIN") || e["action"] != "deny" {
		t.Errorf("log %v, want a deny saying NXDOMAIN", e)
	}
	c, br = rawProxy(t, w.proxy)
	c.Write(socks5.AppendRequest([]byte{5, 1, 0}, socks5.Request{Cmd: socks5.CmdConnect, Domain: "nxdomain.good.test", Port: 443}))
	if got, _ := io.ReadAll(br); len(got) < 4 || got[3] != socks5.ReplyHostUnreachable {
		t.Errorf("SOCKS5 to an unresolvable allowed name: reply %x, want code 04", got)
	}
}

// TestExplicitSOCKSAddresses: SOCKS5 with an IPv4 literal is checked like
// a name's answer: allowed where a rule's destinations cover it, refused
// (0x02) where the address is restricted.
func TestExplicitSOCKSAddresses(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	for _, tt := range []struct {
		addr netip.AddrPort
		code byte
		rule string
	}{
		{w.plain2, socks5.ReplySucceeded, "lit"},
		{w.plain, socks5.ReplyNotAllowed, ""},
		{netip.MustParseAddrPort("[::ffff:169.254.169.254]:80"), socks5.ReplyNotAllowed, ""},
	} {
		c, br := rawProxy(t, w.proxy)
		c.Write(socks5.AppendRequest([]byte{5, 1, 0}, socks5.Request{Cmd: socks5.CmdConnect, Addr: tt.addr.Addr(), Port: tt.addr.Port()}))
		got := make([]byte, 12)
		if _, err := io.ReadFull(br, got); err != nil || got[3] != tt.code {
			t.Errorf("SOCKS5 CONNECT %s: reply %x %v, want code %02x", tt.addr, got, err, tt.code)
			continue
		}
		c.Close()
		e := w.waitLog(bySrcPort(c))
		w.want(e, map[string]any{"rule": tt.rule, "fqdn_source": "none"})
	}
}

// TestExplicitReportOnly: in report-only mode a policy deny is logged
// with enforced false and let through, a restricted address is not.
func TestExplicitReportOnly(t *testing.T) {
	w := newProxyWorld(t, "", `    - {name: report-me, action: deny, fqdn: ["report.good.test"], destinations: ["127.0.0.0/8"]}`, false)
	code, _, err := get(t, client(t, "http://"+w.proxy.String()), fmt.Sprintf("https://report.good.test:%d/", w.https.Port()))
	if err != nil || code != 200 {
		t.Fatalf("report-only deny: %d %v, want it relayed", code, err)
	}
	w.waitLog(matching(map[string]any{"fqdn": "report.good.test", "rule": "report-me", "action": "deny", "enforced": false}))
	_, _, err = get(t, client(t, "http://"+w.proxy.String()), fmt.Sprintf("https://nodest.test:%d/", w.https.Port()))
	if err == nil {
		t.Fatal("report-only let a restricted address through")
	}
	w.waitLog(matching(map[string]any{"fqdn": "nodest.test", "action": "deny", "enforced": true}))
}

// TestExplicitExpectContinue: a client that waits for 100 Continue before
// its body gets it from egressd once the request is allowed.
func TestExplicitExpectContinue(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	c, br := rawProxy(t, w.proxy)
	fmt.Fprintf(c, "POST http://good.test:%d/e HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", w.plain.Port())
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("before the body: %q %v, want 100 Continue", line, err)
	}
	br.ReadString('\n')
	c.Write([]byte("hello"))
	if resp, body := readResponse(t, br, "POST"); resp.StatusCode != 200 || !strings.Contains(body, `body="hello"`) {
		t.Fatalf("POST with Expect: %d %q", resp.StatusCode, body)
	}
}
