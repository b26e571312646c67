package gateway

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/clienthello"
)

// helloJA4 returns the JA4 of the ClientHello a crypto/tls client with cfg
// sends, read off an in-memory pipe and fingerprinted as the gateway does.
// The test's fingerprints are computed, not written down, so that a Go
// release that changes its hello changes both sides.
func helloJA4(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		tls.Client(client, cfg).Handshake()
		client.Close()
	}()
	server.SetDeadline(time.Now().Add(5 * time.Second))
	var raw []byte
	buf := make([]byte, 4096)
	for {
		n, err := server.Read(buf)
		raw = append(raw, buf[:n]...)
		var info clienthello.Info
		if _, st := clienthello.Examine(raw, nil, &info); st == clienthello.Complete {
			return clienthello.JA4(&info, clienthello.TCP)
		}
		if err != nil {
			t.Fatalf("reading the hello of %+v: %v", cfg, err)
		}
	}
}

// TestJA4Rule: a rule listing the Go client's JA4 lets that client reach
// the name, a client with another fingerprint (TLS 1.2 only) is refused,
// and so is plain HTTP to the same name, which has none. Each line logs
// the fingerprint it was decided on.
func TestJA4Rule(t *testing.T) {
	goCfg := &tls.Config{ServerName: "api.good.test", InsecureSkipVerify: true} // as dialTLS
	tls12 := &tls.Config{ServerName: "api.good.test", InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}
	goJA4, otherJA4 := helloJA4(t, goCfg), helloJA4(t, tls12)
	if goJA4 == otherJA4 || !strings.HasPrefix(otherJA4, "t12d") {
		t.Fatalf("JA4 of the two clients: %s and %s, want two, the second TLS 1.2", goJA4, otherJA4)
	}
	w := newWorld(t, baseRecords, fmt.Sprintf(`policy:
  default: deny
  rules:
    - {name: go-client, action: allow, fqdn: ["*.good.test"], destinations: ["127.0.0.0/8"], ja4: [%s]}
`, goJA4))

	t.Run("other client", func(t *testing.T) {
		raw, err := net.Dial("tcp", w.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tls.Client(raw, tls12).Handshake(); err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("handshake error = %v, want a TLS access denied alert", err)
		}
		raw.Close()
		w.want(w.waitLog(bySrcPort(raw)), map[string]any{"action": "deny", "rule": "", "protocol": "tls", "ja4": otherJA4})
	})
	t.Run("plain HTTP", func(t *testing.T) {
		raw, err := net.Dial("tcp", w.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprint(raw, "GET / HTTP/1.1\r\nHost: api.good.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(raw), nil)
		if err != nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("plain HTTP to a fingerprinted name: %v %v, want 403", resp, err)
		}
		resp.Body.Close()
		raw.Close()
		w.want(w.waitLog(bySrcPort(raw)), map[string]any{"action": "deny", "protocol": "http", "ja4": ""})
	})
	w.noServerConn("for a client with an unlisted fingerprint")
	t.Run("listed client", func(t *testing.T) {
		c, raw, err := dialTLS(w, "api.good.test")
		if err != nil {
			t.Fatalf("handshake through egressd: %v", err)
		}
		echo(t, c, []byte("fingerprinted"))
		c.Close()
		w.want(w.waitLog(bySrcPort(raw)), map[string]any{"action": "allow", "rule": "go-client", "protocol": "tls", "ja4": goJA4})
	})
}

// TestJA4Tunnel: a CONNECT tunnel's line carries the fingerprint of the
// hello inside it, though the tunnel was decided on its request.
func TestJA4Tunnel(t *testing.T) {
	w := newProxyWorld(t, "", "", true)
	cfg := &tls.Config{ServerName: "good.test", InsecureSkipVerify: true}
	want := helloJA4(t, cfg)
	c, br := rawProxy(t, w.proxy)
	fmt.Fprintf(c, "CONNECT good.test:%d HTTP/1.1\r\n\r\n", w.echo.Port())
	if resp, _ := readResponse(t, br, "CONNECT"); resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake in the tunnel: %v", err)
	}
	tc.Close()
	w.want(w.waitLog(bySrcPort(c)), map[string]any{"listener": "proxy", "action": "allow", "protocol": "tls", "ja4": want})
}
