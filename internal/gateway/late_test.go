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

	"github.com/egressd/egressd/internal/peek"
	"github.com/egressd/egressd/internal/testnet"
)

// TestLateFirstBytesInTunnel: a client that waits out first_bytes inside a
// CONNECT tunnel, then sends a ClientHello, is decided as if it had sent it
// at once: an SNI other than the tunnel's target is refused (tunnel_sni:
// match) before the server sees it, and the target's own name is relayed.
func TestLateFirstBytesInTunnel(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	target := fmt.Sprintf("good.test:%d", w.echo.Port())

	t.Run("other name refused", func(t *testing.T) {
		c, br := tunnel(t, w.proxy, target)
		time.Sleep(400 * time.Millisecond) // first_bytes is 200ms
		tc := tls.Client(&bufferedConn{c, br}, &tls.Config{ServerName: "x.ads.test", InsecureSkipVerify: true})
		err := tc.Handshake()
		if err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Fatalf("late hello for x.ads.test: %v, want an access_denied alert", err)
		}
		w.noServerConn("for a late hello naming another host")
		e := w.waitLog(matching(map[string]any{"fqdn": "good.test", "action": "deny", "protocol": "tls"}))
		if r := e["reason"].(string); !strings.Contains(r, "late first bytes") || !strings.Contains(r, "x.ads.test") {
			t.Errorf("reason %q does not name the late identification", r)
		}
	})
	t.Run("target name relayed", func(t *testing.T) {
		c, br := tunnel(t, w.proxy, target)
		time.Sleep(400 * time.Millisecond)
		tc := tls.Client(&bufferedConn{c, br}, &tls.Config{ServerName: "good.test", InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("late hello for the target: %v", err)
		}
		tc.Write([]byte("ping"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo through the tunnel: %q %v", buf, err)
		}
		tc.Close()
		e := w.waitLog(matching(map[string]any{"fqdn": "good.test", "action": "allow", "protocol": "tls", "fqdn_source": "connect"}))
		if r := e["reason"].(string); !strings.Contains(r, "late first bytes") {
			t.Errorf("reason %q does not name the late identification", r)
		}
	})
}

// TestTunnelPreconnect: a tunnel that was allowed and then closed by the
// client before any byte (a browser's unused preconnect) is an allow with
// zero bytes, not a deny.
func TestTunnelPreconnect(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	target := fmt.Sprintf("good.test:%d", w.echo.Port())
	c, br := rawProxy(t, w.proxy)
	src := c.LocalAddr().String()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	if resp, _ := readResponse(t, br, "CONNECT"); resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	c.Close()
	e := w.waitLog(func(e entry) bool { return e["src"] == src })
	w.want(e, map[string]any{"action": "allow", "rule": "good", "bytes_up": 0})
}

// TestHTTPEveryRequestInTunnel: inside a CONNECT tunnel, every plain HTTP
// request on the kept-alive connection is decided: the first, naming the
// tunnel's target, is answered; a second naming another host gets a 403
// and never reaches the server.
func TestHTTPEveryRequestInTunnel(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	target := fmt.Sprintf("good.test:%d", w.plain.Port())
	c, br := tunnel(t, w.proxy, target)
	fmt.Fprintf(c, "GET /one HTTP/1.1\r\nHost: %s\r\n\r\n", target)
	resp, body := readResponse(t, br, "GET")
	if resp.StatusCode != 200 || !strings.Contains(body, "path=/one") {
		t.Fatalf("first request: %d %q", resp.StatusCode, body)
	}
	fmt.Fprintf(c, "GET /two HTTP/1.1\r\nHost: other.test:%d\r\n\r\n", w.plain.Port())
	resp, body = readResponse(t, br, "GET")
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("second request naming another host: %d %q, want 403", resp.StatusCode, body)
	}
	w.waitLog(matching(map[string]any{"action": "allow", "protocol": "http", "fqdn": "good.test", "fqdn_source": "connect"}))
	e := w.waitLog(matching(map[string]any{"action": "deny", "protocol": "http", "fqdn": "good.test"}))
	if r := e["reason"].(string); !strings.Contains(r, "other.test") {
		t.Errorf("deny reason %q does not name the other host", r)
	}
}

// TestForwardInventsNoHeaders: a plain-HTTP request without User-Agent
// reaches the server without one (net/http would add its own).
func TestForwardInventsNoHeaders(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	got := make(chan string, 1)
	srv := startRawHTTP(t, func(head string) string {
		got <- head
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	c, br := rawProxy(t, w.proxy)
	fmt.Fprintf(c, "GET http://good.test:%d/ua HTTP/1.1\r\nHost: good.test:%d\r\nX-Keep: 1\r\n\r\n", srv.Port(), srv.Port())
	if resp, body := readResponse(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("GET: %d %q", resp.StatusCode, body)
	}
	head := <-got
	if strings.Contains(strings.ToLower(head), "user-agent") {
		t.Errorf("the server got a User-Agent the client never sent:\n%s", head)
	}
	if !strings.Contains(head, "X-Keep: 1") {
		t.Errorf("an end-to-end header was lost:\n%s", head)
	}
}

// bufferedConn reads through br (which may hold bytes already read) and
// writes to the connection.
type bufferedConn struct {
	netConn
	br *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.br.Read(p) }

type netConn = net.Conn

// startRawHTTP runs a server that reads one request head, hands it to
// answer and writes what answer returns, then closes.
func startRawHTTP(t *testing.T, answer func(head string) string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testnet.Serve(t, ln, func(c net.Conn) {
		br := bufio.NewReader(c)
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			head.WriteString(line)
			if err != nil || line == "\r\n" {
				break
			}
		}
		io.WriteString(c, answer(head.String()))
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

// headsServer is a startRawHTTP that answers every request 200 and sends
// on heads each head that holds want (a tunnel's connection closed
// unused, or bytes relayed as unknown, read as other heads).
func headsServer(t *testing.T, want string) (netip.AddrPort, chan string) {
	heads := make(chan string, 8)
	srv := startRawHTTP(t, func(head string) string {
		if strings.Contains(head, want) {
			heads <- head
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nserved"
	})
	return srv, heads
}

// unread fails t if the server read a head (sent on heads): got is what
// the client was answered.
func unread(t *testing.T, heads chan string, got []byte) {
	t.Helper()
	select {
	case head := <-heads:
		t.Fatalf("the server read a request:\n%s(the client was answered %q)", head, got)
	default:
	}
}

// TestForwardResponseHeadBounded: a server whose response head never ends
// cannot grow egressd: the forwarder stops reading 64 KiB ahead of what
// reached the client and answers 502.
func TestForwardResponseHeadBounded(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan int64, 1)
	testnet.Serve(t, ln, func(c net.Conn) {
		bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Endless: ")
		chunk := []byte(strings.Repeat("a", 64<<10))
		var n int64
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		for n < 1<<30 {
			m, err := c.Write(chunk)
			n += int64(m)
			if err != nil {
				break
			}
		}
		sent <- n
	})
	port := netip.MustParseAddrPort(ln.Addr().String()).Port()
	c, br := rawProxy(t, w.proxy)
	fmt.Fprintf(c, "GET http://good.test:%d/ HTTP/1.1\r\nHost: good.test:%d\r\n\r\n", port, port)
	resp, _ := readResponse(t, br, "GET")
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("endless response head: %d, want 502", resp.StatusCode)
	}
	// What the server got out before egressd closed is its socket
	// buffers' worth and the 64 KiB window, not the gigabyte it tried.
	if n := <-sent; n > 32<<20 {
		t.Errorf("the server wrote %d bytes of one header before egressd stopped reading", n)
	}
}

// TestExplicitListenerRefusesTLS: a client that speaks TLS to the explicit
// listener (an https:// proxy URL) is refused at once with a TLS alert and
// a log line that says why, not after the client_hello timeout.
func TestExplicitListenerRefusesTLS(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	c, err := net.Dial("tcp", w.proxy.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := c.LocalAddr().String()
	tc := tls.Client(c, &tls.Config{ServerName: "proxy.test", InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS to the explicit listener: %v, want a protocol_version alert", err)
	}
	e := w.waitLog(func(e entry) bool { return e["src"] == src })
	w.want(e, map[string]any{"action": "deny", "protocol": "tls"})
	if r := e["reason"].(string); !strings.Contains(r, "speaks TLS") {
		t.Errorf("reason %q does not say the client speaks TLS", r)
	}
}

// TestClosedBeforeNamingIsNoDeny: a client that opens a connection and
// closes it before naming any destination (a browser's spare proxy
// connection, an idle keep-alive opener) decided nothing: its line says
// action "none", not a deny, on every kind of listener.
func TestClosedBeforeNamingIsNoDeny(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	sni := newWorld(t, records{}, "policy: {default: deny}")
	cases := []struct {
		name string
		addr netip.AddrPort
		send string
		logs *world
	}{
		{"explicit, nothing sent", w.proxy, "", w.world},
		{"socks5, greeting only", w.proxy, "\x05\x01\x00", w.world},
		{"socks5, half a request", w.proxy, "\x05\x01\x00\x05\x01", w.world},
		{"http proxy, half a head", w.proxy, "CONNECT good.te", w.world},
		{"sni, nothing sent", sni.addr, "", sni},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", tc.addr.String())
			if err != nil {
				t.Fatal(err)
			}
			src := c.LocalAddr().String()
			io.WriteString(c, tc.send)
			time.Sleep(20 * time.Millisecond)
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c)
			c.Close()
			e := tc.logs.waitLog(func(e entry) bool { return e["src"] == src })
			if e["action"] != "none" {
				t.Errorf("line %v: action %v, want none", e, e["action"])
			}
		})
	}
}

// TestOddVersionInTunnel: inside a CONNECT tunnel, a request line only a
// lenient server reads (nginx takes HTTP/1.01 for HTTP/1.1, and before
// 1.21.1 took control bytes in a target, and picks the virtual host from
// Host) is HTTP, not unknown bytes relayed unread: one naming another
// host never reaches the server.
func TestOddVersionInTunnel(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	srv, heads := headsServer(t, "Host")
	target := fmt.Sprintf("good.test:%d", srv.Port())
	for _, line := range []string{"GET /odd HTTP/1.01", "GET /odd HTTP/1.10", "GET /odd http/1.1",
		"GET /o\x01dd HTTP/1.1", // nginx before 1.21.1 serves control bytes in a target
		// Netty skips control bytes and whitespace before a line and takes
		// any word/D.D for a version.
		"   GET /odd HTTP/1.1", "\x00\x00GET /odd HTTP/1.1", "GET /odd FOO/1.1",
	} {
		t.Run(line, func(t *testing.T) {
			c, br := tunnel(t, w.proxy, target)
			// In two writes: the first bytes alone must not settle it.
			io.WriteString(c, line[:7])
			time.Sleep(20 * time.Millisecond)
			fmt.Fprintf(c, "%s\r\nHost: other.test:%d\r\n\r\n", line[7:], srv.Port())
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, _ := io.ReadAll(br)
			unread(t, heads, got)
			if !strings.HasPrefix(string(got), "HTTP/1.1 4") {
				t.Errorf("%q naming another host: %q, want a refusal", line, got)
			}
		})
	}
}

// TestJunkThenRequestInTunnel: a client whose first bytes are control
// bytes alone (unknown at once: a SOCKS5 greeting is such bytes, and its
// client waits for an answer) and whose next segment is a request line
// is refused before the server has the request: Netty skips the bytes
// and serves the Host the request names.
func TestJunkThenRequestInTunnel(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	srv, heads := headsServer(t, "GET") // the control bytes alone are relayed, as unknown bytes
	c, br := tunnel(t, w.proxy, fmt.Sprintf("good.test:%d", srv.Port()))
	c.Write([]byte{0x05, 0x01, 0x00})
	time.Sleep(400 * time.Millisecond) // past first_bytes: decided unknown on those bytes alone
	fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: other.test:%d\r\n\r\n", srv.Port())
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(br)
	unread(t, heads, got)
	if !strings.HasPrefix(string(got), "HTTP/1.1 400") {
		t.Errorf("answer %q, want a 400", got)
	}
	e := w.waitLog(bySrcPort(c))
	if r, _ := e["reason"].(string); e["action"] != "deny" || !strings.Contains(r, "an HTTP request that the first bytes did not show") {
		t.Errorf("line %v, reason %q", e["action"], r)
	}
}

// TestProtocolRulesInTunnel: a rule naming protocols holds inside CONNECT
// tunnels, as on other listeners: the tunnel is allowed on its name, and
// what it carries, read at once or after first_bytes, is decided again
// with its protocol. An SSH banner to an allowed name is refused before
// the server sees it, and so is a plain HTTP request where http is denied.
func TestProtocolRulesInTunnel(t *testing.T) {
	w := newProxyWorld(t, "", `    - {name: no-ssh, action: deny, protocols: [ssh]}
    - {name: no-http, action: deny, fqdn: ["good.test"], protocols: [http]}
`, true)
	for _, tc := range []struct {
		name, target, first string
		pause               time.Duration
		rule                string
	}{
		{"ssh at once", fmt.Sprintf("good.test:%d", w.echo.Port()), "SSH-2.0-OpenSSH_9.6\r\n", 0, "no-ssh"},
		{"ssh late", fmt.Sprintf("good.test:%d", w.echo.Port()), "SSH-2.0-OpenSSH_9.6\r\n", 400 * time.Millisecond, "no-ssh"},
		{"http", fmt.Sprintf("good.test:%d", w.plain.Port()), fmt.Sprintf("GET / HTTP/1.1\r\nHost: good.test:%d\r\n\r\n", w.plain.Port()), 0, "no-http"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := rawProxy(t, w.proxy)
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", tc.target, tc.target)
			if resp, _ := readResponse(t, br, "CONNECT"); resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %d", resp.StatusCode)
			}
			time.Sleep(tc.pause)
			io.WriteString(c, tc.first)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, _ := io.ReadAll(br)
			if strings.Contains(string(got), "SSH-") || strings.Contains(string(got), "200 OK") {
				t.Fatalf("the server answered: %q", got)
			}
			w.waitLog(matching(map[string]any{"action": "deny", "rule": tc.rule}))
		})
	}
	w.noServerConn("for a tunnel whose protocol a rule denies")
}

// TestHelloAfterPreamble: inside a CONNECT tunnel, a client sends a
// preamble with no name (PostgreSQL's SSLRequest), the server answers,
// and then a ClientHello for another host comes: it is read and refused
// (tunnel_sni: match) before the server sees it, as a server that routes
// on the name after the upgrade would act on it. One for the tunnel's own
// name goes through, after the same preamble.
func TestHelloAfterPreamble(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	hellos := make(chan int, 4)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testnet.Serve(t, ln, func(c net.Conn) {
		req := make([]byte, 8)
		if _, err := io.ReadFull(c, req); err != nil || string(req) != sslRequest {
			return
		}
		c.Write([]byte("S")) // willing to do TLS
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 1)
		if n, _ := c.Read(b); n > 0 && b[0] == 0x16 {
			hellos <- 1 // a TLS record reached the server
		}
	})
	target := fmt.Sprintf("good.test:%d", netip.MustParseAddrPort(ln.Addr().String()).Port())
	for _, tc := range []struct {
		sni     string
		split   bool // the SSLRequest in writes of a few bytes
		reaches bool
	}{{"x.ads.test", false, false}, {"x.ads.test", true, false}, {"good.test", false, true}} {
		t.Run(fmt.Sprintf("%s split=%v", tc.sni, tc.split), func(t *testing.T) {
			c, br := tunnel(t, w.proxy, target)
			if tc.split {
				for _, part := range []string{sslRequest[:1], sslRequest[1:3], sslRequest[3:6], sslRequest[6:]} {
					io.WriteString(c, part)
					time.Sleep(30 * time.Millisecond)
				}
			} else {
				io.WriteString(c, sslRequest)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if b, err := br.ReadByte(); err != nil || b != 'S' {
				t.Fatalf("the server's answer to the SSLRequest: %q %v", b, err)
			}
			tc2 := tls.Client(&bufferedConn{c, br}, &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true})
			tc2.SetDeadline(time.Now().Add(2 * time.Second))
			err := tc2.Handshake()
			select {
			case <-hellos:
				if !tc.reaches {
					t.Fatalf("the server got a ClientHello for %s after the preamble", tc.sni)
				}
			case <-time.After(time.Second):
				if tc.reaches {
					t.Fatalf("a ClientHello for the tunnel's own name did not reach the server (handshake: %v)", err)
				}
				if err == nil || !strings.Contains(err.Error(), "access denied") {
					t.Errorf("hello for %s after the preamble: %v, want an access_denied alert", tc.sni, err)
				}
			}
		})
	}
}

// TestPipelinedHelloRefused: an SSLRequest and a ClientHello in one send
// (the hello would reach the server behind the preamble, unread) is
// refused before the server gets a byte of either.
func TestPipelinedHelloRefused(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	got := make(chan int, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testnet.Serve(t, ln, func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		got <- int(n)
	})
	target := fmt.Sprintf("good.test:%d", netip.MustParseAddrPort(ln.Addr().String()).Port())
	c, br := tunnel(t, w.proxy, target)
	hello := []byte{22, 3, 1, 0, 5, 1, 0, 0, 1, 0}
	c.Write(append([]byte(sslRequest), hello...))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.ReadAll(br)
	if n := <-got; n != 0 {
		t.Errorf("the server got %d bytes of a preamble with a hello behind it", n)
	}
	w.waitLog(matching(map[string]any{"action": "deny"}))
}

// TestHelloBeforeAnswerRefused: a ClientHello sent in a segment of its
// own right behind an SSLRequest, before the server's S came back, is
// refused as one in the same segment is: the server, slow to answer, reads
// the request and nothing more. (Decided, it would have left the S unread
// for the relay to take for the server's answer to the hello.)
func TestHelloBeforeAnswerRefused(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	got := make(chan int, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testnet.Serve(t, ln, func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		req := make([]byte, 8)
		if _, err := io.ReadFull(c, req); err != nil {
			got <- -1
			return
		}
		time.Sleep(200 * time.Millisecond) // the hello is on its way meanwhile
		c.Write([]byte("S"))
		n, _ := io.Copy(io.Discard, c)
		got <- int(n)
	})
	target := fmt.Sprintf("good.test:%d", netip.MustParseAddrPort(ln.Addr().String()).Port())
	c, br := tunnel(t, w.proxy, target)
	io.WriteString(c, sslRequest)
	time.Sleep(20 * time.Millisecond)
	c.Write(goHelloBytes(t, "good.test"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, _ := io.ReadAll(br); len(rest) > 0 {
		t.Errorf("client read %q, want nothing: no answer passed on", rest)
	}
	if n := <-got; n != 0 {
		t.Errorf("the server got %d bytes after the request", n)
	}
	e := w.waitLog(matching(map[string]any{"action": "deny"}))
	if reason, _ := e["reason"].(string); !strings.Contains(reason, peek.ErrPipelined.Error()) {
		t.Errorf("reason %q", reason)
	}
}

// tunnel opens a CONNECT tunnel to target through the explicit proxy at
// proxy, and fails the test unless it is established.
func tunnel(t *testing.T, proxy netip.AddrPort, target string) (*net.TCPConn, *bufio.Reader) {
	t.Helper()
	c, br := rawProxy(t, proxy)
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	if resp, _ := readResponse(t, br, "CONNECT"); resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %d", target, resp.StatusCode)
	}
	return c, br
}

// sslRequest is PostgreSQL's SSLRequest: length 8, code 80877103.
const sslRequest = "\x00\x00\x00\x08\x04\xd2\x16\x2f"

// TestBinaryMessagesAfterPreamble: a binary protocol's first message after
// a server's greeting (a MySQL-like server that greets first, a packet
// whose length byte is 22, as a TLS handshake record's type is) is
// relayed, not taken for a malformed ClientHello and refused.
func TestBinaryMessagesAfterPreamble(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	got := make(chan []byte, 4)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testnet.Serve(t, ln, func(c net.Conn) {
		c.Write([]byte("greeting\x00"))
		for range 2 {
			b := make([]byte, 64)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Read(b)
			if err != nil {
				return
			}
			got <- b[:n]
			c.Write([]byte("ok"))
		}
	})
	target := fmt.Sprintf("good.test:%d", netip.MustParseAddrPort(ln.Addr().String()).Port())
	c, br := tunnel(t, w.proxy, target)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	greet := make([]byte, 9)
	if _, err := io.ReadFull(br, greet); err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"\x16\x00\x00\x00\x03SELECT @@tx_isolation", "\x1e\x00\x00\x01login-packet-of-30-bytes.."} {
		io.WriteString(c, msg)
		select {
		case b := <-got:
			if string(b) != msg {
				t.Fatalf("the server got %q, want %q", b, msg)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%q never reached the server", msg)
		}
		ok := make([]byte, 2)
		if _, err := io.ReadFull(br, ok); err != nil {
			t.Fatalf("after %q: %v", msg, err)
		}
	}
}

// TestRequestAfterOtherProtocolInTunnel: a first request in another
// protocol's version and with no Host (RTSP's, SIP's) stays unknown, but
// Netty reads it as HTTP and keeps the connection alive: a request behind
// it that an HTTP server acts on (an HTTP version, HTTP's own method, a
// Host line) is refused before the server has it, however late it comes.
// A first line in another version whose target is HTTP's (origin-form,
// http://) is refused at once.
func TestRequestAfterOtherProtocolInTunnel(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	heads := make(chan string, 64)
	testnet.Serve(t, ln, func(c net.Conn) {
		// Netty-like: head after head on one connection, each answered.
		br := bufio.NewReader(c)
		for {
			var head strings.Builder
			for {
				line, err := br.ReadString('\n')
				head.WriteString(line)
				if err != nil {
					return
				}
				if line == "\r\n" {
					break
				}
			}
			if strings.Contains(head.String(), "other.test") || strings.Contains(head.String(), "BAR/") {
				heads <- head.String()
			}
			io.WriteString(c, "RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n")
		}
	})
	srv := netip.MustParseAddrPort(ln.Addr().String())
	target := fmt.Sprintf("good.test:%d", srv.Port())
	const rtsp = "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n"
	for _, tc := range []struct{ name, first, later string }{
		{"http request", rtsp, "GET /x HTTP/1.1\r\nHost: other.test\r\n\r\n"},
		{"http request behind control bytes", rtsp, "\x00\x00GET /x HTTP/1.1\r\nHost: other.test\r\n\r\n"},
		{"http method, other version", rtsp, "GET http://other.test/x FOO/1.1\r\n\r\n"},
		{"host line", rtsp, "OPTIONS * RTSP/1.0\r\nCSeq: 2\r\nhost : other.test\r\n\r\n"},
		{"origin-form, other version", rtsp, "FOO /x BAR/1.1\r\n\r\n"},
		{"origin-form first", "FOO / BAR/1.1\r\n\r\n", ""},
		{"http target first", "FOO http://other.test/ BAR/1.1\r\n\r\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := tunnel(t, w.proxy, target)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, tc.first)
			if tc.later != "" {
				answer := make([]byte, len("RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n"))
				if _, err := io.ReadFull(br, answer); err != nil {
					t.Fatalf("the first request (%q) was not answered: %v", tc.first, err)
				}
				io.WriteString(c, tc.later)
			}
			got, _ := io.ReadAll(br)
			unread(t, heads, got)
			if !strings.HasPrefix(string(got), "HTTP/1.1 4") {
				t.Errorf("answer %q, want a refusal", got)
			}
		})
	}
}

// TestProtocolRulesMalformedInLogTunnel: under tunnel_sni: log, a
// malformed ClientHello or an unfinished request head is relayed (the
// tunnel's name decided it), but a rule that denies its protocol still
// holds: what egressd cannot parse is still TLS, or HTTP.
func TestProtocolRulesMalformedInLogTunnel(t *testing.T) {
	w := newProxyWorld(t, "", `    - {name: no-tls, action: deny, fqdn: ["good.test"], protocols: [tls]}
`, true)
	srv, heads := headsServer(t, "\x03") // a record's version byte: a tunnel closed unused reads as an empty head
	for _, tc := range []struct{ name, first string }{
		// A handshake record whose message is a ServerHello: TLS, not a
		// ClientHello egressd can read.
		{"malformed hello", "\x16\x03\x01\x00\x06\x02\x00\x00\x02\x03\x03"},
		// Five warning alerts first: crypto/tls skips them, egressd's
		// reassembly does not.
		{"alerts before the hello", strings.Repeat("\x15\x03\x03\x00\x02\x01\x00", 5) + string(goHelloBytes(t, "good.test"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := tunnel(t, w.proxyLog, fmt.Sprintf("good.test:%d", srv.Port()))
			io.WriteString(c, tc.first)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.ReadAll(br) // refused: at once; relayed: until the deadline
			c.Close()
			e := w.waitLog(bySrcPort(c))
			if e["action"] != "deny" || e["rule"] != "no-tls" {
				t.Errorf("line %v %v (%v), want a deny by no-tls", e["action"], e["rule"], e["reason"])
			}
			select {
			case h := <-heads:
				t.Errorf("the server read %q", h)
			case <-time.After(100 * time.Millisecond):
			}
		})
	}
}

// TestSSHByTheServersAnswer: a rule that denies ssh holds for a client
// whose banner egressd cannot read as one (behind an empty line, which
// Go's SSH servers skip): the server's answer, a version line and a key
// exchange packet, makes the connection SSH. Early, the client's next
// bytes are refused; late (the server's banner came first), the client's
// first bytes are.
func TestSSHByTheServersAnswer(t *testing.T) {
	w := newProxyWorld(t, "", "    - {name: no-ssh, action: deny, protocols: [ssh]}\n", true)
	got := make(chan string, 4)
	ln := testnet.Listen(t)
	testnet.Serve(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// An SSH server: its banner and its KEXINIT's packet header at once.
		c.Write(append([]byte("SSH-2.0-fake\r\n"), 0, 0, 1, 0, 8, 20))
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	target := fmt.Sprintf("good.test:%d", ln.Addr().(*net.TCPAddr).Port)
	for _, tc := range []struct {
		name  string
		pause time.Duration
	}{{"early", 0}, {"late", 400 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := tunnel(t, w.proxy, target)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if tc.pause == 0 {
				io.WriteString(c, "\r\nSSH-2.0-x\r\n")
			}
			if line, err := br.ReadString('\n'); err != nil || line != "SSH-2.0-fake\r\n" {
				t.Fatalf("server banner %q, %v", line, err)
			}
			time.Sleep(tc.pause + 100*time.Millisecond)
			if tc.pause != 0 {
				io.WriteString(c, "\r\nSSH-2.0-x\r\n")
			}
			io.WriteString(c, "KEXINIT")
			io.ReadAll(br)
			c.Close()
			if b := <-got; strings.Contains(b, "KEXINIT") {
				t.Errorf("the server read %q", b)
			}
			e := w.waitLog(bySrcPort(c))
			if e["action"] != "deny" || e["rule"] != "no-ssh" {
				t.Errorf("line %v %v (%v), want a deny by no-ssh", e["action"], e["rule"], e["reason"])
			}
		})
	}
}
