package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// lateRules go before the standard ones: port 443 of srv is reachable by
// address for a client that says nothing (a server-first decision), and
// plain HTTP to allowed.test on port 80.
const lateRules = `  rules:
    - {name: no-ssh, action: deny, protocols: [ssh]}
    - {name: cdn-ip, action: allow, destinations: ["198.51.100.10/32"], ports: [443], protocols: [server-first]}
    - {name: db-ip, action: allow, destinations: ["198.51.100.10/32"], ports: [5432], protocols: [unknown]}
    - {name: web, action: allow, fqdn: ["allowed.test"], ports: [80]}
    - {name: mail-ip, action: allow, destinations: ["198.51.100.10/32"], ports: [587, 5222], protocols: [server-first, unknown]}
    - {name: mail, action: allow, fqdn: ["allowed.test"], ports: [587, 5222]}
`

// TestLateIdentification: a transparent client that waits out first_bytes
// is decided as server-first, provisionally. Its first bytes, when they
// come, are identified and decided as if they had come early: a
// ClientHello naming a denied name is refused with access_denied and
// never reaches the server, however late it comes; an allowed one is
// relayed. And every HTTP request on a kept-alive connection is decided:
// a second request naming a denied Host gets a 403.
func TestLateIdentification(t *testing.T) {
	top := newTopology(t)
	cert, roots := serverCert(t)
	srv := startTLSServer(t, top.srv, cert, "0.0.0.0:443")
	startEchoHTTP(t, top.srv, srvAddr+":80")
	startDNS(t, top.gw, resolverAddr, dnsRecords)
	cfg := strings.Replace(fmt.Sprintf(configTemplate, "5s"), "  rules:\n", lateRules, 1)
	_, log := startEgressdConfig(t, top.gw, cfg, listenerCount)
	top.redirect(t)

	late := func(t *testing.T, name string) (net.Conn, string, error) {
		c, err := top.cli.dial("", srvAddr+":443")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(700 * time.Millisecond) // first_bytes is 300ms
		_, greeting, err := greet(c, &tls.Config{ServerName: name, RootCAs: roots})
		return c, greeting, err
	}
	t.Run("denied name refused", func(t *testing.T) {
		from, ev := log.mark(), srv.mark()
		c, _, err := late(t, "x.ads.test")
		if err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Fatalf("late hello for a denied name: %v, want an access_denied alert", err)
		}
		if got := srv.next(t, ev); got.HelloLen != 0 || got.SNI != "" {
			t.Errorf("the server saw the refused hello: %+v", got)
		}
		log.expect(t, from, "late denied hello", bySrc(c.LocalAddr().String()), want{
			listener: "transparent", fqdn: "x.ads.test", fqdnSource: "sni", protocol: []string{"tls"},
			rule: rule("ads"), action: "deny", reasonHas: "late first bytes",
		})
	})
	t.Run("ssh banner decided as ssh", func(t *testing.T) {
		// Allowed as server-first, then an SSH banner: decided as if it
		// had come early, so a rule denying ssh holds.
		from := log.mark()
		c, err := top.cli.dial("", srvAddr+":443")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		time.Sleep(700 * time.Millisecond) // first_bytes is 300ms
		io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err == nil || !strings.Contains(err.Error(), "reset") {
			t.Errorf("late SSH banner for a rule denying ssh: %v, want a reset", err)
		}
		log.expect(t, from, "late ssh", bySrc(c.LocalAddr().String()), want{
			listener: "transparent", protocol: []string{"ssh"}, rule: rule("no-ssh"), action: "deny", reasonHas: "late first bytes",
		})
	})
	t.Run("hello after a preamble", func(t *testing.T) {
		// PostgreSQL's way to TLS: an SSLRequest (no name: allowed by
		// address), the server's "S", then a ClientHello, here for a
		// denied name: read and refused before the server gets it.
		ln := top.srv.listen(t, srvAddr+":5432")
		gotTLS := make(chan bool, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			req := make([]byte, 8)
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			c.Write([]byte("S"))
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			b := make([]byte, 1)
			n, _ := c.Read(b)
			gotTLS <- n > 0 && b[0] == 0x16
		}()
		from := log.mark()
		c, err := top.cli.dial("", srvAddr+":5432")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "\x00\x00\x00\x08\x04\xd2\x16\x2f")
		if b := make([]byte, 1); func() error { _, err := io.ReadFull(c, b); return err }() != nil || b[0] != 'S' {
			t.Fatalf("no S from the server after the SSLRequest")
		}
		_, _, err = greet(c, &tls.Config{ServerName: "x.ads.test", RootCAs: roots})
		if err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("hello for a denied name after the preamble: %v, want an access_denied alert", err)
		}
		if <-gotTLS {
			t.Error("the server got the ClientHello")
		}
		log.expect(t, from, "hello after a preamble", bySrc(c.LocalAddr().String()), want{
			listener: "transparent", fqdn: "x.ads.test", fqdnSource: "sni", protocol: []string{"tls"},
			rule: rule("ads"), action: "deny", reasonHas: "late first bytes",
		})
	})
	t.Run("STARTTLS", func(t *testing.T) {
		// Allowed by address as server-first (SMTP on 587), then TLS
		// after STARTTLS: its ClientHello is decided as TLS, as a late
		// one is. openssl s_client speaks the SMTP.
		snis := startUpgradeServer(t, top.srv, cert, srvAddr+":587", true)
		for _, tc := range []struct {
			name, rule, action string
		}{{"x.ads.test", "ads", "deny"}, {"allowed.test", "mail", "allow"}} {
			from := log.mark()
			out, err := clientCommand(t, top.cli, "", "openssl", "s_client", "-brief", "-connect", srvAddr+":587",
				"-starttls", "smtp", "-servername", tc.name)
			switch tc.action {
			case "deny":
				if err == nil || !strings.Contains(out, "access denied") {
					t.Errorf("STARTTLS naming %s: %v\n%s\nwant an access_denied alert", tc.name, err, out)
				}
				select {
				case sni := <-snis:
					t.Errorf("the server read a hello for %q", sni)
				case <-time.After(200 * time.Millisecond):
				}
			default:
				if err != nil || !strings.Contains(out, "CONNECTION ESTABLISHED") {
					t.Errorf("STARTTLS naming %s: %v\n%s", tc.name, err, out)
				}
				select {
				case sni := <-snis:
					if sni != tc.name {
						t.Errorf("the server read a hello for %q", sni)
					}
				case <-time.After(10 * time.Second):
					t.Errorf("the server read no hello")
				}
			}
			log.expect(t, from, "STARTTLS "+tc.name, byDst(srvAddr+":587"), want{
				listener: "transparent", fqdn: tc.name, fqdnSource: "sni", protocol: []string{"tls"},
				rule: rule(tc.rule), action: tc.action, reasonHas: "ClientHello after",
			})
		}
	})
	t.Run("client-first upgrade", func(t *testing.T) {
		// A client that speaks first (XMPP-like: its request is no TLS,
		// HTTP or SSH, allowed by address as unknown), then TLS: set up
		// on a relay loop, its hello decided there.
		snis := startUpgradeServer(t, top.srv, cert, srvAddr+":5222", false)
		for _, tc := range []struct {
			name, rule, action string
		}{{"x.ads.test", "ads", "deny"}, {"allowed.test", "mail", "allow"}} {
			from := log.mark()
			c, err := top.cli.dial("", srvAddr+":5222")
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, "<stream to='allowed.test'><starttls/>")
			if b := make([]byte, len("<proceed/>")); func() error { _, err := io.ReadFull(c, b); return err }() != nil {
				t.Fatal("no <proceed/>")
			}
			tc2 := tls.Client(c, &tls.Config{ServerName: tc.name, RootCAs: roots})
			err = tc2.Handshake()
			c.Close()
			switch tc.action {
			case "deny":
				if err == nil || !strings.Contains(err.Error(), "access denied") {
					t.Errorf("upgrade naming %s: %v, want an access_denied alert", tc.name, err)
				}
			default:
				if err != nil {
					t.Errorf("upgrade naming %s: %v", tc.name, err)
					break
				}
				select {
				case sni := <-snis:
					if sni != tc.name {
						t.Errorf("the server read a hello for %q", sni)
					}
				case <-time.After(10 * time.Second):
					t.Errorf("the server read no hello")
				}
			}
			log.expect(t, from, "upgrade "+tc.name, bySrc(c.LocalAddr().String()), want{
				listener: "transparent", fqdn: tc.name, fqdnSource: "sni", protocol: []string{"tls"},
				rule: rule(tc.rule), action: tc.action, reasonHas: "ClientHello after",
			})
		}
		select {
		case sni := <-snis:
			t.Errorf("the server read a hello for %q", sni)
		default:
		}
	})
	t.Run("allowed name relayed", func(t *testing.T) {
		from := log.mark()
		c, greeting, err := late(t, "allowed.test")
		if err != nil || !strings.HasPrefix(greeting, "hello sni=allowed.test") {
			t.Fatalf("late hello for an allowed name: %v, greeting %q", err, greeting)
		}
		log.expect(t, from, "late allowed hello", bySrc(c.LocalAddr().String()), want{
			listener: "transparent", fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
			rule: rule("allowed"), action: "allow", reasonHas: "late first bytes",
		})
	})
	t.Run("openssl after a pause", func(t *testing.T) {
		// openssl connects and sends its hello at once: a relay in cli
		// holds the hello back until the intercepted connection has been
		// silent past first_bytes.
		requireTools(t, "openssl")
		ln := top.cli.listen(t, "127.0.0.1:0")
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			up, err := top.cli.dial("", srvAddr+":443")
			if err != nil {
				return
			}
			defer up.Close()
			time.Sleep(700 * time.Millisecond)
			go io.Copy(up, c)
			io.Copy(c, up)
		}()
		from := log.mark()
		out, err := clientCommand(t, top.cli, "", "openssl", "s_client", "-brief", "-connect", ln.Addr().String(), "-servername", "x.ads.test")
		if err == nil || !strings.Contains(out, "alert access denied") {
			t.Errorf("openssl s_client after a pause: exit %v, want an access denied alert:\n%s", err, out)
		}
		log.expect(t, from, "openssl late", func(l accessLine) bool { return l.FQDN == "x.ads.test" }, want{
			listener: "transparent", fqdnSource: "sni", protocol: []string{"tls"}, rule: rule("ads"), action: "deny", reasonHas: "late first bytes",
		})
	})
	t.Run("leading ChangeCipherSpec", func(t *testing.T) {
		// Raw records: a ChangeCipherSpec, then a real hello for a denied
		// name, sent at once. TLS is recognised by its record layer.
		from, accepts := log.mark(), srv.accepts.Load()
		c, err := top.cli.dial("", srvAddr+":443")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		defer func() {
			if n := srv.accepts.Load() - accepts; n != 0 {
				t.Errorf("the server accepted %d connections for a denied hello, want 0", n)
			}
		}()
		msg := append([]byte{0x14, 0x03, 0x03, 0x00, 0x01, 0x01}, clientHelloRecord(t, "x.ads.test")...)
		c.Write(msg)
		var alert [7]byte
		if _, err := io.ReadFull(c, alert[:]); err != nil || alert[0] != 0x15 || alert[6] != 49 {
			t.Errorf("after a leading ChangeCipherSpec: % x %v, want an access_denied alert record", alert, err)
		}
		c.Close()
		log.expect(t, from, "leading CCS", bySrc(c.LocalAddr().String()), want{
			listener: "transparent", fqdn: "x.ads.test", protocol: []string{"tls"}, rule: rule("ads"), action: "deny",
		})
	})
	t.Run("curl keep-alive", func(t *testing.T) {
		requireTools(t, "curl")
		from := log.mark()
		u := "http://" + srvAddr + "/"
		out, err := clientCommand(t, top.cli, "", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
			"-H", "Host: allowed.test", u+"one", "--next", "-s", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
			"-H", "Host: x.ads.test", u+"two")
		if err != nil || out != "200 1\n403 0\n" {
			t.Errorf("curl, two requests on one connection: %q %v; want 200 on a new connection, then 403 on the same", out, err)
		}
		log.expect(t, from, "curl second request", func(l accessLine) bool { return l.FQDN == "x.ads.test" }, want{
			listener: "transparent", fqdnSource: "host", protocol: []string{"http"}, rule: rule("ads"), action: "deny",
		})
	})
	t.Run("any method", func(t *testing.T) {
		// HTTP is recognised by its request line's shape, not a list of
		// methods: a WebDAV method (or a made-up one) naming a denied
		// Host is refused like a GET.
		requireTools(t, "curl")
		for _, method := range []string{"PROPFIND", "FOO"} {
			from := log.mark()
			out, err := clientCommand(t, top.cli, "", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
				"-H", "Host: x.ads.test", "http://"+srvAddr+"/")
			if err != nil || out != "403" {
				t.Errorf("curl -X %s to a denied Host: %q %v, want 403", method, out, err)
			}
			log.expect(t, from, method, func(l accessLine) bool { return l.FQDN == "x.ads.test" }, want{
				listener: "transparent", fqdnSource: "host", protocol: []string{"http"}, rule: rule("ads"), action: "deny",
			})
		}
	})
	t.Run("every http request", func(t *testing.T) {
		from := log.mark()
		c, err := top.cli.dial("", srvAddr+":80")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(c)
		io.WriteString(c, "GET /one HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("first request: %v %v", resp, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), "host=allowed.test path=/one") {
			t.Errorf("first response body %q", body)
		}
		io.WriteString(c, "GET /two HTTP/1.1\r\nHost: x.ads.test\r\n\r\n")
		resp, err = http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 403 {
			t.Fatalf("second request, denied host: %v %v, want 403", resp, err)
		}
		src := c.LocalAddr().String()
		log.expect(t, from, "first request", func(l accessLine) bool { return l.Src == src && l.Action == "allow" }, want{
			listener: "transparent", fqdn: "allowed.test", fqdnSource: "host", protocol: []string{"http"}, rule: rule("web"),
		})
		log.expect(t, from, "second request", func(l accessLine) bool { return l.Src == src && l.Action == "deny" }, want{
			listener: "transparent", fqdn: "x.ads.test", fqdnSource: "host", protocol: []string{"http"}, rule: rule("ads"),
		})
	})
}

// startEchoHTTP serves plain HTTP on addr in ns, answering each request
// with its Host and path.
func startEchoHTTP(t testing.TB, ns *netns, addr string) {
	t.Helper()
	ln := ns.listen(t, addr)
	s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "host=%s path=%s", r.Host, r.URL.Path)
	})}
	go s.Serve(ln)
	t.Cleanup(func() { s.Shutdown(context.Background()) })
}

// clientHelloRecord is the first record of a real crypto/tls client's
// hello for name.
func clientHelloRecord(t *testing.T, name string) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: name, InsecureSkipVerify: true}).Handshake()
	var hdr [5]byte
	if _, err := io.ReadFull(b, hdr[:]); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, 5+(int(hdr[3])<<8|int(hdr[4])))
	copy(rec, hdr[:])
	if _, err := io.ReadFull(b, rec[5:]); err != nil {
		t.Fatal(err)
	}
	return rec
}

// startUpgradeServer runs a server in ns on addr that speaks a protocol
// of its own until the client asks for TLS, then TLS with cert, and
// sends the name of each ClientHello it read on the channel it returns.
// smtp: it greets first and takes STARTTLS as an SMTP server does;
// otherwise the client speaks first, and "<starttls/>" is answered
// "<proceed/>".
func startUpgradeServer(t *testing.T, ns *netns, cert tls.Certificate, addr string, smtp bool) chan string {
	snis := make(chan string, 16)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			snis <- h.ServerName
			return nil, nil
		},
	}
	testnet.Serve(t, ns.listen(t, addr), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		br := bufio.NewReader(c)
		if smtp {
			io.WriteString(c, "220 mail.allowed.test ESMTP\r\n")
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				cmd := strings.ToUpper(strings.TrimSpace(line))
				if strings.HasPrefix(cmd, "EHLO") {
					io.WriteString(c, "250-mail.allowed.test\r\n250 STARTTLS\r\n")
				} else if cmd == "STARTTLS" {
					io.WriteString(c, "220 2.0.0 Ready to start TLS\r\n")
					break
				} else {
					io.WriteString(c, "250 OK\r\n")
				}
			}
		} else {
			var seen []byte
			for !strings.Contains(string(seen), "<starttls/>") {
				b := make([]byte, 512)
				n, err := br.Read(b)
				seen = append(seen, b[:n]...)
				if err != nil {
					return
				}
			}
			io.WriteString(c, "<proceed/>")
		}
		tc := tls.Server(c, cfg)
		if tc.Handshake() == nil {
			io.Copy(tc, tc)
		}
	})
	return snis
}
