package gateway

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/testnet"
)

// retryServer is a TLS server as lenient as OpenSSL about a second
// ClientHello: it answers every first hello with a HelloRetryRequest and
// then acts on the name of the next hello, whatever the first named. It
// reports each hello's name it read, in order ("" for none), on names.
type retryServer struct {
	addr  netip.AddrPort
	names chan string
}

// helloRetryRequest is a minimal HelloRetryRequest record (RFC 8446
// §4.1.4): a ServerHello with the retry random, TLS 1.3, x25519 asked for.
func helloRetryRequest() []byte {
	random := sha256.Sum256([]byte("HelloRetryRequest"))
	body := []byte{3, 3}
	body = append(body, random[:]...)
	body = append(body, 0, 0x13, 0x01, 0) // empty session id, TLS_AES_128_GCM_SHA256, null compression
	body = append(body, 0, 12, 0, 43, 0, 2, 3, 4, 0, 51, 0, 2, 0, 29)
	msg := append([]byte{2, 0, 0, byte(len(body))}, body...)
	return append([]byte{22, 3, 3, 0, byte(len(msg))}, msg...)
}

func startRetryServer(t *testing.T) *retryServer {
	t.Helper()
	ln := testnet.Listen(t)
	rs := &retryServer{addr: netip.MustParseAddrPort(ln.Addr().String()), names: make(chan string, 8)}
	testnet.Serve(t, ln, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var raw []byte
		buf := make([]byte, 4096)
		// A PostgreSQL SSLRequest first is answered "S", as a database
		// proxy that routes on the name after it does.
		pre := make([]byte, 8)
		if _, err := io.ReadFull(c, pre); err != nil {
			return
		}
		if string(pre) == sslRequest {
			c.Write([]byte("S"))
		} else {
			raw = pre
		}
		for hellos := 0; hellos < 2; {
			var h clienthello.Info
			used, st := clienthello.Examine(raw, nil, &h)
			switch st {
			case clienthello.NeedMore:
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				raw = append(raw, buf[:n]...)
				continue
			case clienthello.Complete:
			default:
				return
			}
			rs.names <- string(h.ServerName)
			raw = raw[used:]
			if hellos++; hellos == 1 {
				c.Write(helloRetryRequest())
				c.Write([]byte{20, 3, 3, 0, 1, 1})
			}
		}
		c.Write([]byte("served"))
	})
	return rs
}

// serverNames returns the names the server has read so far.
func (rs *retryServer) serverNames() []string {
	var got []string
	for {
		select {
		case n := <-rs.names:
			got = append(got, n)
		case <-time.After(200 * time.Millisecond):
			return got
		}
	}
}

// TestSecondHelloNamesAnotherServer: a client decided on an allowed name
// that answers the server's HelloRetryRequest with a hello for a denied
// name (or for none) is refused with access_denied, and the server never
// reads that hello, however the client splits it; the line says deny and
// why. The attack, before the watch: the lenient server was served for
// "x.ads.test", denied by rule.
func TestSecondHelloNamesAnotherServer(t *testing.T) {
	rs := startRetryServer(t)
	w := newWorldTo(t, baseRecords, basePolicy, rs.addr.Port())
	hrr := helloRetryRequest()
	for _, tc := range []struct {
		name, second string
		split        int // write the second hello in pieces of this size, 0: whole
	}{
		{"a denied name", "x.ads.test", 0},
		{"a denied name, in pieces", "x.ads.test", 100},
		{"no name", "", 0},
		{"an allowed name of another rule", "nodest.test", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			onLoop := w.gw.onLoop.Load()
			defer func() {
				// After the first, the name is cached: the loop sets the
				// connection up itself (inline.go), and watches it too.
				if tc.name != "a denied name" && w.gw.onLoop.Load() == onLoop {
					t.Error("not set up on the relay loop: that path went untested")
				}
			}()
			c := dialListener(t, w)
			c.Write(goHelloBytes(t, "good.test"))
			got := make([]byte, len(hrr))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, hrr) {
				t.Fatalf("the HelloRetryRequest did not come through: %x %v", got, err)
			}
			second := append([]byte{20, 3, 3, 0, 1, 1}, goHelloBytes(t, tc.second)...)
			for size := len(second); len(second) > 0; second = second[size:] {
				if tc.split > 0 {
					size = min(tc.split, len(second))
				}
				c.Write(second[:size])
				time.Sleep(time.Millisecond)
				if size == len(second) {
					break
				}
			}
			rest, _ := io.ReadAll(c)
			// After the server's change_cipher_spec: the gateway's alert.
			if !isAccessDenied(rest) || bytes.Contains(rest, []byte("served")) {
				t.Errorf("client read %x, want an access_denied alert and no service", rest)
			}
			if names := rs.serverNames(); len(names) != 1 || names[0] != "good.test" {
				t.Errorf("the server read hellos for %q, want only the first, good.test", names)
			}
			e := w.waitLog(bySrcPort(c))
			w.want(e, map[string]any{"action": "deny", "fqdn": "good.test", "rule": ""})
			if reason, _ := e["reason"].(string); !strings.Contains(reason, "second ClientHello") {
				t.Errorf("reason %q does not say why", reason)
			}
		})
	}
	t.Run("the same name passes", func(t *testing.T) {
		c := dialListener(t, w)
		c.Write(goHelloBytes(t, "good.test"))
		io.ReadFull(c, make([]byte, len(hrr)))
		c.Write(append([]byte{20, 3, 3, 0, 1, 1}, goHelloBytes(t, "good.test")...))
		rest, _ := io.ReadAll(c)
		c.Close() // the server has closed: the line comes with the client's close
		if !bytes.HasSuffix(rest, []byte("served")) {
			t.Errorf("client read %x, want the server's answer", rest)
		}
		if names := rs.serverNames(); len(names) != 2 {
			t.Errorf("the server read hellos for %q, want both", names)
		}
		w.want(w.waitLog(bySrcPort(c)), map[string]any{"action": "allow", "fqdn": "good.test"})
	})
	t.Run("a second hello in the first's own record", func(t *testing.T) {
		// A server that reads on in the record (OpenSSL does) would take it
		// after its HelloRetryRequest. Nothing is dialled.
		c := dialListener(t, w)
		both := append(handshakeMsg(goHelloBytes(t, "good.test")), handshakeMsg(goHelloBytes(t, "x.ads.test"))...)
		c.Write(reframe(both, 16384))
		io.ReadAll(c)
		if names := rs.serverNames(); len(names) != 0 {
			t.Errorf("the server read hellos for %q, want none", names)
		}
		e := w.waitLog(bySrcPort(c))
		w.want(e, map[string]any{"action": "deny"})
		if reason, _ := e["reason"].(string); !strings.Contains(reason, "after the ClientHello in its own record") {
			t.Errorf("reason %q", reason)
		}
	})
	t.Run("a second hello sent with the first", func(t *testing.T) {
		c := dialListener(t, w)
		c.Write(append(goHelloBytes(t, "good.test"), goHelloBytes(t, "x.ads.test")...))
		rest, _ := io.ReadAll(c)
		if len(rest) != 7 || !isAccessDenied(rest) {
			t.Errorf("client read %x, want only an access_denied alert", rest)
		}
		if names := rs.serverNames(); len(names) != 0 {
			t.Errorf("the server read hellos for %q, want none: nothing is dialled", names)
		}
		e := w.waitLog(bySrcPort(c))
		w.want(e, map[string]any{"action": "deny"})
	})
}

// dialListener connects to w's sni listener, for 10 s at most; the
// connection is closed when the test ends.
func dialListener(t *testing.T, w *world) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", w.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// isAccessDenied says b ends with a fatal access_denied alert record, in
// any TLS record version.
func isAccessDenied(b []byte) bool {
	return len(b) >= 7 && b[len(b)-7] == 21 && b[len(b)-6] == 3 && bytes.HasSuffix(b, []byte{0, 2, 2, 49})
}

// TestSecondHelloInTunnel: the same inside a CONNECT tunnel to the
// allowed name, with the hello first or after a PostgreSQL SSLRequest
// (the late hello a database proxy routes on).
func TestSecondHelloInTunnel(t *testing.T) {
	rs := startRetryServer(t)
	w := newProxyWorld(t, "", "", true)
	target := fmt.Sprintf("good.test:%d", rs.addr.Port())
	hrr := helloRetryRequest()
	for _, preamble := range []bool{false, true} {
		for _, second := range []string{"x.ads.test", "good.test"} {
			t.Run(fmt.Sprintf("preamble=%v second=%s", preamble, second), func(t *testing.T) {
				c, br := tunnel(t, w.proxy, target)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if preamble {
					io.WriteString(c, sslRequest)
					if b, err := br.ReadByte(); err != nil || b != 'S' {
						t.Fatalf("the answer to the SSLRequest: %q %v", b, err)
					}
				}
				c.Write(goHelloBytes(t, "good.test"))
				got := make([]byte, len(hrr))
				if _, err := io.ReadFull(br, got); err != nil || !bytes.Equal(got, hrr) {
					t.Fatalf("the HelloRetryRequest did not come through: %x %v", got, err)
				}
				c.Write(append([]byte{20, 3, 3, 0, 1, 1}, goHelloBytes(t, second)...))
				rest, _ := io.ReadAll(br)
				names := rs.serverNames()
				if second == "good.test" {
					if !bytes.HasSuffix(rest, []byte("served")) || len(names) != 2 {
						t.Errorf("client read %x, server read %q: want both hellos served", rest, names)
					}
					return
				}
				if !isAccessDenied(rest) || bytes.Contains(rest, []byte("served")) {
					t.Errorf("client read %x, want an access_denied alert and no service", rest)
				}
				if len(names) != 1 || names[0] != "good.test" {
					t.Errorf("the server read hellos for %q, want only the first, good.test", names)
				}
			})
		}
	}
}

// TestCoalescedHelloInTunnel: a hello with a second packed into its own
// record is refused in a tunnel under tunnel_sni: log too, where other
// malformed hellos are only logged: it is built to get past the
// decision, its protocol and JA4 rules included.
func TestCoalescedHelloInTunnel(t *testing.T) {
	rs := startRetryServer(t)
	w := newProxyWorld(t, "", "", true)
	target := fmt.Sprintf("good.test:%d", rs.addr.Port())
	for _, proxy := range []netip.AddrPort{w.proxy, w.proxyLog} {
		c, br := tunnel(t, proxy, target)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		both := append(handshakeMsg(goHelloBytes(t, "good.test")), handshakeMsg(goHelloBytes(t, "x.ads.test"))...)
		c.Write(reframe(both, 16384))
		io.ReadAll(br)
		if names := rs.serverNames(); len(names) != 0 {
			t.Errorf("%v: the server read hellos for %q, want none", proxy, names)
		}
		e := w.waitLog(bySrcPort(c))
		w.want(e, map[string]any{"action": "deny", "enforced": true})
	}
}

// TestSecondHelloAtOpenSSL runs the attack against a real OpenSSL server
// (openssl s_server, which serves a second certificate to the name
// -servername gives): asked for a retry, it serves the second hello's
// name. Straight to it, a first hello for good.test and a second for
// x.ads.test get x.ads.test's certificate (its larger flight shows it);
// through egressd, which allows good.test and denies x.ads.test, the
// client gets access_denied and the server no flight at all.
func TestSecondHelloAtOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("no openssl")
	}
	dir := t.TempDir()
	writePEM := func(name string, cert tls.Certificate) (certFile, keyFile string) {
		certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
		os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
		return certFile, keyFile
	}
	// x.ads.test's certificate is made large, so that its flight tells.
	var many []string
	for i := range 40 {
		many = append(many, fmt.Sprintf("host%d.x.ads.test", i))
	}
	c1, k1 := writePEM("good", testnet.Cert(t, "good.test"))
	c2, k2 := writePEM("ads", testnet.Cert(t, append([]string{"x.ads.test"}, many...)...))
	ln := testnet.Listen(t)
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	srv := exec.Command("openssl", "s_server", "-accept", fmt.Sprintf("127.0.0.1:%d", port),
		"-cert", c1, "-key", k1, "-servername", "x.ads.test", "-cert2", c2, "-key2", k2,
		"-groups", "P-256", "-tls1_3", "-quiet")
	stdin, _ := srv.StdinPipe() // s_server ends at its stdin's EOF
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); srv.Process.Kill(); srv.Wait() })
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("openssl s_server did not listen: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// try sends a first hello for good.test (key shares for X25519MLKEM768
	// and X25519: the server, P-256 only, asks for a retry), then a
	// second for second with a P-256 share, and returns what came back
	// after the retry request.
	hrr := 0
	try := func(addr, second string) []byte {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(goHelloBytes(t, "good.test"))
		var hdr [5]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatalf("%s: no answer to the first hello: %v", addr, err)
		}
		first := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		io.ReadFull(c, first)
		if len(first) >= 38 && first[0] == 2 && bytes.Equal(first[6:38], helloRetryRequest()[11:43]) {
			hrr++
		}
		c.Write(append([]byte{20, 3, 3, 0, 1, 1}, helloFor(t, second, tls.CurveP256)...))
		c.SetDeadline(time.Now().Add(time.Second))
		rest, _ := io.ReadAll(c)
		return rest
	}
	direct := fmt.Sprintf("127.0.0.1:%d", port)
	small, big := len(try(direct, "good.test")), len(try(direct, "x.ads.test"))
	if hrr != 2 || big < small+500 {
		t.Fatalf("straight to openssl: %d retries of 2; flights of %d bytes (good.test) and %d (x.ads.test): the attack shows nothing here", hrr, small, big)
	}
	t.Logf("openssl serves the second hello's name: flights of %d bytes for good.test, %d for x.ads.test", small, big)

	w := newWorldTo(t, baseRecords, basePolicy, port)
	rest := try(w.addr.String(), "x.ads.test")
	if !isAccessDenied(rest) || len(rest) > 32 {
		t.Errorf("through egressd: the client read %d bytes (%x), want an access_denied alert and no flight", len(rest), rest[:min(len(rest), 32)])
	}
	if rest := try(w.addr.String(), "good.test"); len(rest) < small-100 {
		t.Errorf("through egressd, the same name in both hellos: %d bytes, want the server's flight (%d)", len(rest), small)
	}
}

// helloFor is a crypto/tls client's first record for name, offering key
// shares for curves (none: crypto/tls's default, post-quantum).
func helloFor(t *testing.T, name string, curves ...tls.CurveID) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: name, InsecureSkipVerify: true, CurvePreferences: curves}).Handshake()
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
