package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// upgradeServer is a server that speaks a protocol of its own until the
// client asks for TLS, then TLS (Go's, which records the name each
// ClientHello asks for), then echoes.
type upgradeServer struct {
	addr  netip.AddrPort
	snis  chan string // the server name of each hello the server read
	plain chan string // what each connection read before its TLS (or its end)
}

// startUpgradeServer runs an upgradeServer. smtp: it greets first and
// takes STARTTLS as an SMTP server does; otherwise the client speaks
// first, and "<starttls/>" (XMPP's, shortened) is answered "<proceed/>".
func startUpgradeServer(t *testing.T, smtp bool) *upgradeServer {
	t.Helper()
	s := &upgradeServer{snis: make(chan string, 16), plain: make(chan string, 16)}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{selfSigned(t)},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			s.snis <- h.ServerName
			return nil, nil
		},
	}
	ln := testnet.Listen(t)
	testnet.Serve(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		var seen strings.Builder
		defer func() { s.plain <- seen.String() }()
		br := bufio.NewReader(c)
		if smtp {
			io.WriteString(c, "220 mail.good.test ESMTP\r\n")
			for {
				line, err := br.ReadString('\n')
				seen.WriteString(line)
				if err != nil {
					return
				}
				cmd := strings.ToUpper(strings.TrimSpace(line))
				switch {
				case strings.HasPrefix(cmd, "EHLO"):
					io.WriteString(c, "250-mail.good.test\r\n250 STARTTLS\r\n")
					continue
				case cmd == "DATA":
					io.WriteString(c, "354 go on\r\n")
					for {
						l, err := br.ReadString('\n')
						seen.WriteString(l)
						if err != nil {
							return
						}
						if l == ".\r\n" {
							break
						}
					}
					io.WriteString(c, "250 OK\r\n")
					continue
				case cmd != "STARTTLS":
					io.WriteString(c, "250 OK\r\n")
					continue
				}
				io.WriteString(c, "220 2.0.0 Ready to start TLS\r\n")
				break
			}
		} else {
			for !strings.Contains(seen.String(), "<starttls/>") {
				b := make([]byte, 512)
				n, err := br.Read(b)
				seen.Write(b[:n])
				if err != nil {
					return
				}
			}
			io.WriteString(c, "<proceed/>")
		}
		if br.Buffered() > 0 {
			return // a hello pipelined behind the request: refused, as Postfix does
		}
		tc := tls.Server(c, cfg)
		if tc.Handshake() != nil {
			return
		}
		io.Copy(tc, tc)
	})
	s.addr = netip.MustParseAddrPort(ln.Addr().String())
	return s
}

// noHello fails the test if the server read a ClientHello.
func (s *upgradeServer) noHello(t *testing.T, why string) {
	t.Helper()
	select {
	case sni := <-s.snis:
		t.Errorf("the server read a ClientHello for %q %s", sni, why)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestStartTLSInTunnel: a real client (openssl s_client -starttls smtp
// through a CONNECT tunnel, under tunnel_sni: match) asking the server
// for TLS after SMTP's greeting, EHLO and STARTTLS has its ClientHello
// decided as the tunnel's first bytes would be: a name other than the
// tunnel's target gets access_denied and the server never reads it; the
// target's own name is relayed, and the line names the hello.
func TestStartTLSInTunnel(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("no openssl")
	}
	w := newProxyWorld(t, "", "", true)
	srv := startUpgradeServer(t, true)
	target := fmt.Sprintf("good.test:%d", srv.addr.Port())
	run := func(name string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "openssl", "s_client", "-proxy", w.proxy.String(), "-connect", target,
			"-starttls", "smtp", "-servername", name, "-brief")
		cmd.Stdin = strings.NewReader("hello\n")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("x.ads.test")
	if err == nil || !strings.Contains(out, "access denied") {
		t.Fatalf("STARTTLS naming x.ads.test: %v\n%s\nwant an access_denied alert", err, out)
	}
	srv.noHello(t, "for a name the tunnel does not name")
	e := w.waitLog(matching(map[string]any{"action": "deny", "protocol": "tls", "fqdn": "good.test"}))
	if r := e["reason"].(string); !strings.Contains(r, "ClientHello after") || !strings.Contains(r, "x.ads.test") {
		t.Errorf("reason %q does not name the hello and its name", r)
	}

	out, err = run("good.test")
	if err != nil || !strings.Contains(out, "CONNECTION ESTABLISHED") {
		t.Fatalf("STARTTLS naming the target: %v\n%s", err, out)
	}
	if sni := <-srv.snis; sni != "good.test" {
		t.Errorf("the server read a hello for %q", sni)
	}
	e = w.waitLog(matching(map[string]any{"action": "allow", "protocol": "tls", "fqdn": "good.test"}))
	if r := e["reason"].(string); !strings.Contains(r, "ClientHello after") {
		t.Errorf("reason %q does not name the hello", r)
	}
}

// TestUpgradeHelloInTunnel: the ClientHello of an upgrade is found and
// decided however the client makes it: after a client-first protocol's
// request (XMPP's starttls, no line end), pipelined behind STARTTLS in
// one write, in one-byte records, or behind a binary request in the same
// write; x.ads.test is refused before the server reads a hello.
func TestUpgradeHelloInTunnel(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	smtp, xmpp := startUpgradeServer(t, true), startUpgradeServer(t, false)
	hello := helloFor(t, "x.ads.test")
	oneByte := func(h []byte) []byte {
		var out []byte
		msg := h[5:]
		for _, b := range msg {
			out = append(out, 22, h[1], h[2], 0, 1, b)
		}
		return out
	}
	denied := func(t *testing.T, c net.Conn, br *bufio.Reader) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		rest, _ := io.ReadAll(br)
		if i := bytes.Index(rest, []byte{21, 3}); i < 0 || len(rest) < i+7 || rest[i+6] != 49 {
			t.Fatalf("got % x, want an access_denied alert", rest)
		}
	}
	// mail opens a tunnel to the SMTP server and reads its greeting;
	// say sends a command and checks its answer's start.
	mail := func(t *testing.T) (*net.TCPConn, *bufio.Reader) {
		t.Helper()
		c, br := tunnel(t, w.proxy, fmt.Sprintf("good.test:%d", smtp.addr.Port()))
		if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "220 ") {
			t.Fatalf("greeting %q, %v", line, err)
		}
		return c, br
	}
	say := func(t *testing.T, c net.Conn, br *bufio.Reader, cmd, answer string) {
		t.Helper()
		io.WriteString(c, cmd)
		if line, _ := br.ReadString('\n'); !strings.HasPrefix(line, answer) {
			t.Fatalf("%q answered %q", cmd, line)
		}
	}
	t.Run("after a client-first request", func(t *testing.T) {
		c, br := tunnel(t, w.proxy, fmt.Sprintf("good.test:%d", xmpp.addr.Port()))
		io.WriteString(c, "<stream to='good.test'><starttls/>")
		got := make([]byte, len("<proceed/>"))
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatal(err)
		}
		c.Write(hello)
		denied(t, c, br)
		xmpp.noHello(t, "after <starttls/>")
		e := w.waitLog(matching(map[string]any{"action": "deny", "protocol": "tls", "bytes_up": 34}))
		if r := e["reason"].(string); !strings.Contains(r, "ClientHello after 34 bytes") {
			t.Errorf("reason %q", r)
		}
	})
	t.Run("pipelined behind STARTTLS", func(t *testing.T) {
		c, br := mail(t)
		c.Write(append([]byte("EHLO c\r\nSTARTTLS\r\n"), hello...))
		denied(t, c, br)
		if plain := <-smtp.plain; plain != "" {
			t.Errorf("the server read %q of a connection refused before it was sent on", plain)
		}
	})
	t.Run("in one-byte records", func(t *testing.T) {
		c, br := mail(t)
		say(t, c, br, "STARTTLS\r\n", "220 2.0.0")
		c.Write(oneByte(hello))
		denied(t, c, br)
		smtp.noHello(t, "in one-byte records")
		<-smtp.plain
	})
	t.Run("behind a binary request", func(t *testing.T) {
		c, br := mail(t)
		req := append([]byte{32, 0, 0, 1, 0x85, 0xae, 0xff, 0x19}, make([]byte, 28)...)
		c.Write(append(req, hello...))
		denied(t, c, br)
		if plain := <-smtp.plain; plain != "" {
			t.Errorf("the server read %q", plain)
		}
	})
	t.Run("after a hello that started no TLS", func(t *testing.T) {
		// A hello for the tunnel's own name inside a mail's body is
		// found and allowed; the server answers it in SMTP, not TLS, so
		// the client's bytes are read for a hello again: the one after
		// STARTTLS, naming x.ads.test, is refused.
		c, br := mail(t)
		for range 6 { // each found, allowed, and answered in SMTP
			say(t, c, br, "DATA\r\n", "354")
			say(t, c, br, string(helloFor(t, "good.test"))+"\r\n.\r\n", "250")
		}
		say(t, c, br, "STARTTLS\r\n", "220 2.0.0")
		c.Write(hello)
		denied(t, c, br)
		smtp.noHello(t, "after a hello in a mail's body")
		<-smtp.plain
		// The line says one decision, however many hellos came: a
		// client must not grow it.
		e := w.waitLog(bySrcPort(c))
		if r := e["reason"].(string); len(r) > 1000 {
			t.Errorf("reason of %d bytes after 7 hellos: %.300q…", len(r), r)
		}
	})
	// A first message that names a protocol the server then does not
	// speak (an SSH banner, an allowed hello) is a decoy: the server
	// answers it in SMTP, so what the client sends next is read as any
	// unknown connection's is.
	t.Run("behind an SSH banner", func(t *testing.T) {
		c, br := mail(t)
		say(t, c, br, "SSH-2.0-decoy\r\n", "250")
		say(t, c, br, "STARTTLS\r\n", "220 2.0.0")
		c.Write(hello)
		denied(t, c, br)
		smtp.noHello(t, "behind an SSH banner")
		<-smtp.plain
	})
	t.Run("behind an allowed hello the server answered in SMTP", func(t *testing.T) {
		c, br := mail(t)
		c.Write(helloFor(t, "good.test"))
		time.Sleep(50 * time.Millisecond) // the hello alone, decided
		io.WriteString(c, "\r\nEHLO c\r\n")
		for { // a "250 OK" for each line the hello's bytes made, then EHLO's
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("EHLO: %v", err)
			}
			if strings.HasPrefix(line, "250 STARTTLS") {
				break
			}
		}
		say(t, c, br, "STARTTLS\r\n", "220 2.0.0")
		c.Write(hello)
		denied(t, c, br)
		smtp.noHello(t, "behind an allowed hello")
		<-smtp.plain
	})
	t.Run("behind an allowed hello the server did not answer", func(t *testing.T) {
		c, br := tunnel(t, w.proxy, fmt.Sprintf("good.test:%d", xmpp.addr.Port()))
		c.Write(helloFor(t, "good.test"))
		time.Sleep(50 * time.Millisecond) // the hello alone, decided
		io.WriteString(c, "<starttls/>")
		got := make([]byte, len("<proceed/>"))
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatal(err)
		}
		c.Write(hello)
		denied(t, c, br)
		xmpp.noHello(t, "behind an allowed hello")
		<-xmpp.plain
	})
	t.Run("behind an allowed hello, in one write", func(t *testing.T) {
		c, br := mail(t)
		c.Write(slices.Concat(helloFor(t, "good.test"), []byte("\r\nEHLO c\r\nSTARTTLS\r\n"), hello))
		denied(t, c, br)
		smtp.noHello(t, "behind an allowed hello, in one write")
		<-smtp.plain
	})
	t.Run("inside a record behind an allowed hello", func(t *testing.T) {
		// Application data may pass before the server's answer; a hello
		// inside it, before that answer, is one no TLS client sends.
		c, br := tunnel(t, w.proxy, fmt.Sprintf("good.test:%d", xmpp.addr.Port()))
		body := append([]byte("<starttls/>"), hello...)
		record := append([]byte{23, 3, 3, byte(len(body) >> 8), byte(len(body))}, body...)
		c.Write(slices.Concat(helloFor(t, "good.test"), record))
		denied(t, c, br)
		xmpp.noHello(t, "inside a record behind an allowed hello")
		<-xmpp.plain
	})
	t.Run("more hellos that started no TLS than any upgrade needs", func(t *testing.T) {
		// Each is allowed and answered in SMTP; the 17th, allowed name
		// or not, ends the connection before the server has it.
		c, br := mail(t)
		for range 16 {
			say(t, c, br, "DATA\r\n", "354")
			say(t, c, br, string(helloFor(t, "good.test"))+"\r\n.\r\n", "250")
		}
		say(t, c, br, "DATA\r\n", "354")
		io.WriteString(c, string(helloFor(t, "good.test"))+"\r\n.\r\n")
		denied(t, c, br)
		if plain := <-smtp.plain; strings.Count(plain, "DATA") != 17 || strings.Count(plain, "good.test") != 16 {
			t.Errorf("the server read %d DATA and %d hellos, want 17 and 16", strings.Count(plain, "DATA"), strings.Count(plain, "good.test"))
		}
		e := w.waitLog(bySrcPort(c))
		if r := e["reason"].(string); e["action"] != "deny" || !strings.Contains(r, "a ClientHello after 16 allowed that started no TLS") {
			t.Errorf("line %v, reason %q", e["action"], r)
		}
	})
	t.Run("begun with the first bytes, never finished", func(t *testing.T) {
		// Its hold is client_hello's (3s here), not idle's (1m): the
		// read below would time out first otherwise.
		c, br := mail(t)
		c.Write(append([]byte("EHLO c\r\nSTARTTLS\r\n"), hello[:200]...))
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		rest, err := io.ReadAll(br)
		if i := bytes.Index(rest, []byte{21, 3}); err != nil || i < 0 || len(rest) < i+7 || rest[i+6] != 49 {
			t.Fatalf("got % x, %v; want an access_denied alert once client_hello passed", rest, err)
		}
		e := w.waitLog(matching(map[string]any{"action": "deny", "rule": "", "bytes_up": len("EHLO c\r\nSTARTTLS\r\n")}))
		if r := e["reason"].(string); !strings.Contains(r, "client_hello timeout") {
			t.Errorf("reason %q", r)
		}
		<-smtp.plain
	})
	t.Run("a HelloRetryRequest after the upgrade", func(t *testing.T) {
		// A server that takes P-256 only asks Go's client (X25519 and
		// ML-KEM key shares) for a second hello: the same name, passed.
		ln := testnet.Listen(t)
		cfg := &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}, CurvePreferences: []tls.CurveID{tls.CurveP256}}
		testnet.Serve(t, ln, func(c net.Conn) {
			c.SetDeadline(time.Now().Add(20 * time.Second))
			b := make([]byte, len("<starttls/>"))
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			io.WriteString(c, "<proceed/>")
			tc := tls.Server(c, cfg)
			if tc.Handshake() == nil {
				io.Copy(tc, tc)
			}
		})
		c, br := tunnel(t, w.proxy, fmt.Sprintf("good.test:%d", ln.Addr().(*net.TCPAddr).Port))
		io.WriteString(c, "<starttls/>")
		if _, err := io.ReadFull(br, make([]byte, len("<proceed/>"))); err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(&bufferedConn{c, br}, &tls.Config{ServerName: "good.test", InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("handshake with a retry: %v", err)
		}
		if st := tc.ConnectionState(); st.CurveID != tls.CurveP256 {
			t.Errorf("curve %v: no retry took place", st.CurveID)
		}
		tc.Write([]byte("ping"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo: %q %v", buf, err)
		}
	})
	t.Run("allowed name relayed", func(t *testing.T) {
		c, br := tunnel(t, w.proxy, fmt.Sprintf("good.test:%d", xmpp.addr.Port()))
		io.WriteString(c, "<stream to='good.test'><starttls/>")
		got := make([]byte, len("<proceed/>"))
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(&bufferedConn{c, br}, &tls.Config{ServerName: "good.test", InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("handshake for the tunnel's target: %v", err)
		}
		tc.Write([]byte("ping"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo: %q %v", buf, err)
		}
		if sni := <-xmpp.snis; sni != "good.test" {
			t.Errorf("server read a hello for %q", sni)
		}
	})
}

// startPrefixServer runs a server whose protocol reads one message of the
// length its first four bytes give (PostgreSQL's startup packet, which
// answers an SSLRequest whatever its length says), answers "S", then
// speaks TLS from the next byte, sending on snis the name of each hello
// it reads.
func startPrefixServer(t *testing.T, answer string) (netip.AddrPort, chan string) {
	snis := make(chan string, 4)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{selfSigned(t)},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			snis <- h.ServerName
			return nil, nil
		},
	}
	ln := testnet.Listen(t)
	testnet.Serve(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		var n [4]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		if _, err := io.ReadFull(c, make([]byte, int(binary.BigEndian.Uint32(n[:]))-4)); err != nil {
			return
		}
		io.WriteString(c, answer)
		tls.Server(c, cfg).Handshake()
	})
	return netip.MustParseAddrPort(ln.Addr().String()), snis
}

// TestUpgradeHelloBehindHello: a server whose protocol takes bytes of an
// allowed hello as its own reads TLS from a second hello. Two ways to
// place one, each refused before the server reads it: inside the allowed
// hello (its cipher suites), where the server's message ends; and sent
// after it, before the server answered it, as the body of what looks
// like a record behind it.
func TestUpgradeHelloBehindHello(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	addr, snis := startPrefixServer(t, "S")
	target := fmt.Sprintf("good.test:%d", addr.Port())
	denied := helloFor(t, "x.ads.test")
	refused := func(t *testing.T, c net.Conn, br *bufio.Reader) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		rest, _ := io.ReadAll(br)
		if i := bytes.Index(rest, []byte{21, 3}); i < 0 || len(rest) < i+7 || rest[i+6] != 49 {
			t.Fatalf("got % x, want an access_denied alert", rest[:min(len(rest), 64)])
		}
		select {
		case sni := <-snis:
			t.Fatalf("the server read a hello for %q", sni)
		case <-time.After(200 * time.Millisecond):
		}
	}
	length := func(n int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(n)) }
	t.Run("inside the allowed one", func(t *testing.T) {
		outer := testnet.ClientHello("good.test", append(append([]byte(nil), denied...), make([]byte, len(denied)%2)...), []byte{0})
		k := bytes.Index(outer, denied)
		c, br := tunnel(t, w.proxy, target)
		c.Write(append(length(4+k), outer[:k]...))
		if b, err := br.ReadByte(); err != nil || b != 'S' {
			t.Fatalf("no S: %v", err)
		}
		c.Write(outer[k:])
		refused(t, c, br)
	})
	t.Run("a later hello keeps the line's counts", func(t *testing.T) {
		// The first hello, decided with the first bytes, is taken by the
		// server's protocol, which answers in its own words: no TLS
		// began. The
		// client's next hello is decided, allowed and served; the line
		// still counts the first bytes.
		addr, snis := startPrefixServer(t, "OK, TLS now\r\n")
		first := helloFor(t, "good.test")
		c, br := tunnel(t, w.proxy, fmt.Sprintf("good.test:%d", addr.Port()))
		c.Write(append(length(4+len(first)), first...))
		if line, err := br.ReadString('\n'); err != nil || line != "OK, TLS now\r\n" {
			t.Fatalf("answer %q: %v", line, err)
		}
		tc := tls.Client(&bufferedConn{c, br}, &tls.Config{ServerName: "good.test", InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("the later hello: %v", err)
		}
		if sni := <-snis; sni != "good.test" {
			t.Fatalf("the server read a hello for %q", sni)
		}
		c.Close()
		e := w.waitLog(bySrcPort(c))
		if up := e["bytes_up"].(float64); up < float64(4+len(first)+len(helloFor(t, "good.test"))) {
			t.Errorf("bytes_up %v: the first bytes (%d) are not counted (line %v)", up, 4+len(first), e)
		}
		if r := e["reason"].(string); !strings.Contains(r, "ClientHello after") {
			t.Errorf("reason %q", r)
		}
	})
	t.Run("behind the allowed one, before its answer", func(t *testing.T) {
		first := append(helloFor(t, "good.test"), 23, 3, 3, byte(len(denied)>>8), byte(len(denied)))
		c, br := tunnel(t, w.proxy, target)
		c.Write(append(length(4+len(first)), first...))
		if b, err := br.ReadByte(); err != nil || b != 'S' {
			t.Fatalf("no S: %v", err)
		}
		c.Write(denied)
		refused(t, c, br)
	})
}

// TestDecoyHelloOnSNIListener: on an sni listener, a first hello for an
// allowed name whose server answers in SMTP, not TLS, was a decoy: the
// client's STARTTLS and its hello for a denied name are read and refused,
// on the set-up goroutine's path and on the relay loop's (the name
// cached).
func TestDecoyHelloOnSNIListener(t *testing.T) {
	smtp := startUpgradeServer(t, true)
	w := newWorldTo(t, baseRecords, basePolicy, smtp.addr.Port())
	for _, path := range []string{"goroutine", "loop"} {
		t.Run(path, func(t *testing.T) {
			onLoop := w.gw.onLoop.Load()
			c := dialListener(t, w)
			br := bufio.NewReader(c)
			c.Write(goHelloBytes(t, "good.test"))
			if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "220 ") {
				t.Fatalf("greeting %q, %v", line, err)
			}
			io.WriteString(c, "\r\nEHLO c\r\n")
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("EHLO: %v", err)
				}
				if strings.HasPrefix(line, "250 STARTTLS") {
					break
				}
			}
			io.WriteString(c, "STARTTLS\r\n")
			if line, _ := br.ReadString('\n'); !strings.HasPrefix(line, "220 2.0.0") {
				t.Fatalf("STARTTLS answered %q", line)
			}
			c.Write(goHelloBytes(t, "x.ads.test"))
			rest, _ := io.ReadAll(br)
			if !isAccessDenied(rest) {
				t.Errorf("got % x, want an access_denied alert", rest)
			}
			smtp.noHello(t, "behind a decoy hello")
			<-smtp.plain
			if path == "loop" && w.gw.onLoop.Load() == onLoop {
				t.Error("not set up on the relay loop: that path went untested")
			}
		})
	}
}

func TestSSHServer(t *testing.T) {
	kexinit := []byte{0, 0, 4, 0x3c, 7, 20}
	for _, tc := range []struct {
		name      string
		in        []byte
		done, ssh bool
	}{
		{"openssh", append([]byte("SSH-2.0-OpenSSH_9.6\r\n"), kexinit...), true, true},
		{"lines before the version", append([]byte("Welcome\r\nno entry\r\nSSH-2.0-x\r\n"), kexinit...), true, true},
		{"version line, then nothing yet", []byte("SSH-2.0-x\r\n\x00\x00"), false, false},
		// An IMAP server answers a tag "SSH-2.0-x" with a line that
		// starts with it: text follows, not a packet.
		{"imap echoing the tag", []byte("SSH-2.0-x BAD Error in IMAP command\r\na OK Begin TLS\r\n"), true, false},
		{"smtp", []byte("500 5.5.2 Error: bad syntax\r\n"), false, false},
		{"no packet after the line", append([]byte("SSH-2.0-x\r\n"), 0, 0, 0, 0, 7, 20), true, false},
		{"endless lines", bytes.Repeat([]byte("x\r\n"), 2000), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s, one sshServer
			done, ssh := s.feed(tc.in)
			var d1, s1 bool
			for i := 0; i < len(tc.in) && !d1; i++ {
				d1, s1 = one.feed(tc.in[i : i+1])
			}
			if done != tc.done || ssh != tc.ssh || d1 != done || s1 != ssh {
				t.Errorf("feed = %v, %v (a byte at a time %v, %v); want %v, %v", done, ssh, d1, s1, tc.done, tc.ssh)
			}
		})
	}
}

// TestSSHDecoyAnsweredByIMAP: an SSH banner sent to an IMAP server,
// which answers with a line that starts with it (the tag), is a decoy:
// the client's STARTTLS and its hello for a denied name are read and
// refused.
func TestSSHDecoyAnsweredByIMAP(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	snis := make(chan string, 4)
	ln := testnet.Listen(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}, GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		snis <- h.ServerName
		return nil, nil
	}}
	testnet.Serve(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "* OK ready\r\n")
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			tag, cmd, _ := strings.Cut(strings.TrimSpace(line), " ")
			if strings.EqualFold(cmd, "STARTTLS") {
				io.WriteString(c, tag+" OK Begin TLS negotiation now\r\n")
				tls.Server(&bufferedConn{c, br}, cfg).Handshake()
				return
			}
			io.WriteString(c, tag+" BAD Error in IMAP command\r\n")
		}
	})
	c, br := tunnel(t, w.proxy, fmt.Sprintf("good.test:%d", ln.Addr().(*net.TCPAddr).Port))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "* OK") {
		t.Fatalf("greeting %q, %v", line, err)
	}
	io.WriteString(c, "SSH-2.0-x\r\n")
	if line, _ := br.ReadString('\n'); !strings.HasPrefix(line, "SSH-2.0-x BAD") {
		t.Fatalf("banner answered %q", line)
	}
	io.WriteString(c, "a STARTTLS\r\n")
	if line, _ := br.ReadString('\n'); !strings.HasPrefix(line, "a OK") {
		t.Fatalf("STARTTLS answered %q", line)
	}
	c.Write(helloFor(t, "x.ads.test"))
	rest, _ := io.ReadAll(br)
	if !isAccessDenied(rest) {
		t.Errorf("got % x, want an access_denied alert", rest)
	}
	select {
	case sni := <-snis:
		t.Errorf("the server read a ClientHello for %q", sni)
	case <-time.After(100 * time.Millisecond):
	}
}
