package e2e

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// TestRedirect runs clients through iptables REDIRECT to the transparent
// listeners: "transparent" (sni_destination: verify) for 10.99.1.2 and
// "trust" (sni_destination: trust) for 10.99.1.3.
func TestRedirect(t *testing.T) {
	w := newWorld(t, worldOptions{intercept: redirect, ipv6: true})
	w.countUpstreamSYNs(t)
	t.Run("openssl allowed", func(t *testing.T) { testOpenSSLAllowed(t, w, "transparent") })
	t.Run("set up on the loop", func(t *testing.T) { testLoopSetUp(t, w) })
	t.Run("openssl denied", func(t *testing.T) { testOpenSSLDenied(t, w, "transparent") })
	t.Run("http denied", func(t *testing.T) { testHTTPDenied(t, w) })
	t.Run("fragmented hello", func(t *testing.T) { testFragmentedHello(t, w) })
	t.Run("bulk half-close", func(t *testing.T) { testBulk(t, w) })
	t.Run("spoofed sni", func(t *testing.T) { testSpoofedSNI(t, w) })
	t.Run("ssh", func(t *testing.T) { testSSH(t, w, "transparent") })
	t.Run("server-first", func(t *testing.T) { testServerFirst(t, w) })
	t.Run("ipv6", func(t *testing.T) { testRedirectIPv6(t, w) })
	t.Run("multipath client", func(t *testing.T) { testMultipathClient(t, w, "transparent") })
	t.Run("upstream mark", func(t *testing.T) {
		// Every connection egressd opened, here and above, carries its
		// SO_MARK.
		c, err := w.cli.dial("", srvAddr+":443")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := greet(c, w.tlsConfig("allowed.test")); err != nil {
			t.Fatalf("allowed client: %v", err)
		}
		marked, unmarked := w.upstreamSYNs(t)
		if marked == 0 || unmarked != 0 {
			t.Errorf("SYNs from gw to srv: %d with mark 0x100, %d without; want some with and none without", marked, unmarked)
		}
	})
}

// testMultipathClient: a client that offers Multipath TCP is intercepted
// like any other. An MPTCP listening socket would accept it as MPTCP, and
// an MPTCP socket has no SO_ORIGINAL_DST: egressd would lose where a
// REDIRECTed client was going. Its listeners are plain TCP, so the client
// falls back.
func testMultipathClient(t *testing.T, w *world, listener string) {
	if err := testnet.MPTCPWorks(w.cli.do); err != nil {
		if inCI() {
			t.Fatalf("CI's kernel must speak MPTCP: %v", err)
		}
		t.Skipf("the test would prove nothing: %v", err)
	}
	from, ev := w.log.mark(), w.tls.mark()
	var c net.Conn
	err := w.cli.do(func() (err error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		d.SetMultipathTCP(true)
		c, err = d.Dial("tcp4", srvAddr+":443")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	src := c.LocalAddr().String()
	// Asked before greet closes c: Go takes a closed socket for MPTCP.
	if mp, err := c.(*net.TCPConn).MultipathTCP(); err != nil || mp {
		t.Errorf("the client's connection is Multipath TCP (err %v); want a fallback to TCP", err)
	}
	_, greeting, err := greet(c, w.tlsConfig("allowed.test"))
	if wantGreet := "hello sni=allowed.test local=" + srvAddr + ":443"; err != nil || !strings.HasPrefix(greeting, wantGreet) {
		t.Errorf("MPTCP client: handshake %v, greeting %q, want %q", err, greeting, wantGreet)
	} else if got := w.tls.next(t, ev); got.Err != nil {
		t.Errorf("server: %v", got.Err)
	}
	w.log.expect(t, from, "MPTCP client", bySrc(src), want{
		listener: listener, dst: srvAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
		rule: rule("allowed"), action: "allow", bytes: 1,
	})
}

// testRedirectIPv6: ip6tables REDIRECT to the transparent6 listener, so
// egressd reads the original destination with IP6T_SO_ORIGINAL_DST. An
// allowed name that resolves (AAAA) to the destination is relayed; a denied
// one gets an access_denied alert.
func testRedirectIPv6(t *testing.T, w *world) {
	w.redirect6(t)
	dst := "[" + srvAddr6 + "]:443"
	t.Run("allowed", func(t *testing.T) {
		from, ev := w.log.mark(), w.tls.mark()
		c, err := w.cli.dial("", dst)
		if err != nil {
			t.Fatal(err)
		}
		src := c.LocalAddr().String()
		_, greeting, err := greet(c, w.tlsConfig("allowed.test"))
		if wantGreet := "hello sni=allowed.test local=" + dst; err != nil || !strings.HasPrefix(greeting, wantGreet) {
			t.Errorf("transparent6 listener: handshake %v, greeting %q, want %q", err, greeting, wantGreet)
		} else if got := w.tls.next(t, ev); got.Err != nil || got.Local != dst {
			t.Errorf("server: connection on %s (err %v), want on %s", got.Local, got.Err, dst)
		}
		w.log.expect(t, from, "IPv6 allowed", bySrc(src), want{
			listener: "transparent6", dst: dst, fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
			rule: rule("allowed"), action: "allow", bytes: 1,
		})
	})
	t.Run("denied", func(t *testing.T) {
		from, accepts := w.log.mark(), w.tls.accepts.Load()
		c, err := w.cli.dial("", dst)
		if err != nil {
			t.Fatal(err)
		}
		src := c.LocalAddr().String()
		_, greeting, err := greet(c, w.tlsConfig("x.ads.test"))
		if err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("transparent6 listener, SNI x.ads.test: want an access denied alert, got %v (greeting %q)", err, greeting)
		}
		w.log.expect(t, from, "IPv6 denied", bySrc(src), want{
			listener: "transparent6", dst: dst, fqdn: "x.ads.test", fqdnSource: "sni", protocol: []string{"tls"},
			rule: rule("ads"), action: "deny",
		})
		if n := w.tls.accepts.Load() - accepts; n != 0 {
			t.Errorf("the server accepted %d connections for a denied client, want 0", n)
		}
	})
}

// testHTTPDenied: plain HTTP to a denied Host gets a 403 whose body names
// the rule.
func testHTTPDenied(t *testing.T, w *world) {
	requireTools(t, "curl")
	from := w.log.mark()
	out, err := clientCommand(t, w.cli, "", "curl", "-sS", "--max-time", "10", "-w", "\nstatus=%{http_code}",
		"--resolve", "x.ads.test:80:"+srvAddr, "http://x.ads.test/")
	body, status, _ := strings.Cut(out, "\nstatus=")
	if err != nil || status != "403" || !strings.Contains(strings.ReplaceAll(body, "x.ads.test", ""), "ads") {
		t.Errorf("curl http://x.ads.test/: want a 403 whose body names rule ads, got exit %v, status %q, body %q", err, status, body)
	}
	w.log.expect(t, from, "curl", byListener("transparent"), want{
		listener: "transparent", dst: srvAddr + ":80", fqdn: "x.ads.test", fqdnSource: "host", protocol: []string{"http"},
		rule: rule("ads"), action: "deny",
	})
}

// testFragmentedHello: ClientHellos split over many TLS records and TCP
// segments are reassembled for the decision and reach the server verbatim,
// record for record.
func testFragmentedHello(t *testing.T, w *world) {
	t.Run("openssl max_send_frag", func(t *testing.T) {
		from, ev := w.log.mark(), w.tls.mark()
		// Offering many long ALPN names grows the hello past 512 bytes, so
		// openssl has to split it.
		alpn := []string{greetProto}
		for i := range 8 {
			alpn = append(alpn, strings.Repeat(string(rune('a'+i)), 100))
		}
		out, err := sClient(t, w, "", "-connect", srvAddr+":443", "-servername", "allowed.test",
			"-max_send_frag", "512", "-alpn", strings.Join(alpn, ","))
		if !strings.Contains(out, "hello sni=allowed.test") {
			t.Errorf("openssl s_client -max_send_frag 512: no greeting (exit %v):\n%s", err, out)
		}
		got := w.tls.next(t, ev)
		if got.Err != nil || got.HelloRecords < 2 {
			t.Errorf("server: ClientHello of %d bytes in %d records (err %v), want several records", got.HelloLen, got.HelloRecords, got.Err)
		}
		w.log.expect(t, from, "openssl -max_send_frag", byListener("transparent"), want{fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"}, rule: rule("allowed"), action: "allow", bytes: 1})
	})
	t.Run("one-byte records", func(t *testing.T) {
		from, ev := w.log.mark(), w.tls.mark()
		c, err := w.cli.dial("", srvAddr+":443")
		if err != nil {
			t.Fatal(err)
		}
		src := c.LocalAddr().String()
		st, greeting, err := greet(&tinyRecordConn{Conn: c}, w.tlsConfig("allowed.test"))
		if err != nil || !strings.HasPrefix(greeting, "hello sni=allowed.test") {
			t.Errorf("handshake with one-byte records: %v, greeting %q", err, greeting)
		}
		got := w.tls.next(t, ev)
		if got.Err != nil || got.HelloLen == 0 || got.HelloRecords != got.HelloLen {
			t.Errorf("server: ClientHello of %d bytes in %d records (err %v), want one record per byte", got.HelloLen, got.HelloRecords, got.Err)
		}
		t.Logf("ClientHello of %d bytes in %d records, %s", got.HelloLen, got.HelloRecords, tls.VersionName(st.Version))
		w.log.expect(t, from, "one-byte records", bySrc(src), want{fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"}, rule: rule("allowed"), action: "allow", bytes: 1})
	})
}

// testBulk: a Go client with the default config (a post-quantum key share,
// so a ClientHello larger than one segment) sends bulkSize bytes, half-closes,
// and receives bulkSize bytes; the hashes match at both ends.
func testBulk(t *testing.T, w *world) {
	cfg := w.tlsConfig("allowed.test", hashProto)
	hello := clientHello(t, cfg.Clone())
	if len(hello) <= 1448 { // a full-size segment on the veths (MTU 1500)
		t.Errorf("default crypto/tls ClientHello is %d bytes: it fits in one segment, the case needs more", len(hello))
	}
	from, ev := w.log.mark(), w.tls.mark()
	c, err := w.cli.dial("", srvAddr+":443")
	if err != nil {
		t.Fatal(err)
	}
	src := c.LocalAddr().String()
	res, err := bulk(c, cfg)
	if err != nil {
		t.Errorf("client: %v", err)
	}
	got := w.tls.next(t, ev)
	if got.Err != nil {
		t.Errorf("server: %v", got.Err)
	}
	if got.Received != bulkSize || got.RecvSHA != res.sentSHA {
		t.Errorf("upstream: server received %d bytes sha256 %s, client sent %d bytes sha256 %s", got.Received, got.RecvSHA, bulkSize, res.sentSHA)
	}
	if !got.SawFIN {
		t.Errorf("the client's TCP half-close did not reach the server as a FIN")
	}
	if res.received != bulkSize || res.recvSHA != got.SentSHA {
		t.Errorf("downstream: client received %d bytes sha256 %s, server sent %d bytes sha256 %s", res.received, res.recvSHA, got.Sent, got.SentSHA)
	}
	w.log.expect(t, from, "bulk client", bySrc(src), want{
		listener: "transparent", dst: srvAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
		rule: rule("allowed"), action: "allow", bytes: bulkSize,
	})
}

// testSpoofedSNI: an allowed name sent to an address it does not resolve to
// is denied under sni_destination: verify, and relayed as-is under trust.
func testSpoofedSNI(t *testing.T, w *world) {
	t.Run("verify", func(t *testing.T) {
		from, accepts := w.log.mark(), w.tls.accepts.Load()
		args := []string{"-connect", attackerAddr + ":443", "-servername", "allowed.test"}
		out, err := sClient(t, w, "", args...)
		if err == nil || !strings.Contains(out, "alert access denied") {
			t.Errorf("openssl s_client %s: want an access denied alert, got exit %v:\n%s", strings.Join(args, " "), err, out)
		}
		w.log.expect(t, from, "spoofed SNI", byListener("transparent"), want{
			listener: "transparent", dst: attackerAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
			action: "deny", reasonHas: "does not resolve",
		})
		if n := w.tls.accepts.Load() - accepts; n != 0 {
			t.Errorf("the attacker's server accepted %d connections, want 0", n)
		}
	})
	t.Run("trust", func(t *testing.T) {
		from := w.log.mark()
		c, err := w.cli.dial(cliTrustAddr+":0", attackerAddr+":443")
		if err != nil {
			t.Fatal(err)
		}
		src := c.LocalAddr().String()
		_, greeting, err := greet(c, w.tlsConfig("allowed.test"))
		if wantGreet := "hello sni=allowed.test local=" + attackerAddr + ":443"; err != nil || !strings.HasPrefix(greeting, wantGreet) {
			t.Errorf("trust listener: handshake %v, greeting %q, want %q", err, greeting, wantGreet)
		}
		w.log.expect(t, from, "trusted SNI", bySrc(src), want{
			listener: "trust", dst: attackerAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
			rule: rule("allowed"), action: "allow", bytes: 1,
		})
	})
}

// testServerFirst: a client that waits for the server's banner gets it;
// egressd decides on the destination alone after first_bytes.
func testServerFirst(t *testing.T, w *world) {
	from := w.log.mark()
	c, err := w.cli.dial("", srvAddr+":25")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := c.LocalAddr().String()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	r := bufio.NewReader(c)
	banner, err := r.ReadString('\n')
	if err != nil || banner != "220 ready\r\n" {
		t.Fatalf("banner: %q, %v; want %q", banner, err, "220 ready\r\n")
	}
	io.WriteString(c, "QUIT\r\n")
	if bye, err := r.ReadString('\n'); err != nil || bye != "221 bye\r\n" {
		t.Errorf("after QUIT: %q, %v; want %q", bye, err, "221 bye\r\n")
	}
	c.Close()
	w.log.expect(t, from, "server-first client", bySrc(src), want{
		listener: "transparent", dst: srvAddr + ":25", fqdnSource: "none", protocol: []string{"server-first"},
		rule: rule("smtp"), action: "allow", bytes: 1,
	})
}
