package gateway

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

const basePolicy = `policy:
  default: deny
  rules:
    - {name: good, action: allow, fqdn: ["good.test", "*.good.test"], destinations: ["127.0.0.0/8"]}
    - {name: nodest, action: allow, fqdn: ["nodest.test"]}
    - {name: mixed, action: allow, fqdn: ["mixed.test"], destinations: ["198.51.100.0/24"]}
    - {name: ads, action: deny, fqdn: ["*.ads.test"]}
`

var baseRecords = records{
	"good.test":     {"127.0.0.1"},
	"api.good.test": {"127.0.0.1"},
	"nodest.test":   {"127.0.0.1"},
	"mixed.test":    {"198.51.100.7", "127.0.0.1"},
	"x.ads.test":    {"127.0.0.1"},
	"other.test":    {"127.0.0.1"},
}

func dialTLS(w *world, sni string) (*tls.Conn, net.Conn, error) {
	raw, err := net.Dial("tcp", w.addr.String())
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { raw.Close() })
	c := tls.Client(raw, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, raw, c.Handshake()
}

// echo sends msg through c to the echo server and checks that it comes
// back whole.
func echo(t *testing.T, c io.ReadWriter, msg []byte) {
	t.Helper()
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through egressd: %v", err)
	}
}

// TestSNIAllowedRelays runs a real crypto/tls client (post-quantum hello,
// larger than one packet) through the sni listener and echoes data.
func TestSNIAllowedRelays(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	c, raw, err := dialTLS(w, "API.Good.Test.")
	if err != nil {
		t.Fatalf("handshake through egressd: %v", err)
	}
	if got := <-w.serverCh; got != "API.Good.Test" { // crypto/tls drops the trailing dot
		t.Errorf("server saw SNI %q", got)
	}
	msg := bytes.Repeat([]byte("egressd"), 10_000)
	echo(t, c, msg)
	c.Close()
	e := w.waitLog(bySrcPort(raw))
	w.want(e, map[string]any{
		"listener": "sni", "action": "allow", "rule": "good", "fqdn": "api.good.test",
		"fqdn_source": "sni", "protocol": "tls", "enforced": true, "dst": w.echo.String(),
		"alpn": []any{}, "ech": false,
	})
	if e["bytes_up"].(float64) < float64(len(msg)) || e["bytes_down"].(float64) < float64(len(msg)) {
		t.Errorf("log bytes up/down = %v/%v, want >= %d", e["bytes_up"], e["bytes_down"], len(msg))
	}
}

// TestSNIDenied checks every way the sni listener refuses, from the
// client's side and in the log.
func TestSNIDenied(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	for _, tc := range []struct {
		name, sni, rule, reason string
	}{
		{"deny rule", "x.ads.test", "ads", `matched rule "ads"`},
		{"default", "other.test", "", "default"},
		{"restricted answer", "nodest.test", "nodest", "restricted address 127.0.0.1"},
		{"mixed answers", "mixed.test", "mixed", "restricted address 127.0.0.1"},
		{"unresolvable", "nxdomain.good.test", "", "NXDOMAIN"},
		{"no sni", "", "", "no server name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, raw, err := dialTLS(w, tc.sni)
			if err == nil || !strings.Contains(err.Error(), "access denied") {
				t.Errorf("handshake error = %v, want a TLS access denied alert", err)
			}
			raw.Close() // as real clients do after an alert: egressd logs at close
			e := w.waitLog(bySrcPort(raw))
			w.want(e, map[string]any{"action": "deny", "rule": tc.rule, "protocol": "tls", "enforced": true})
			if r, _ := e["reason"].(string); !strings.Contains(r, tc.reason) {
				t.Errorf("log reason = %q, want it to contain %q", r, tc.reason)
			}
		})
	}
	w.noServerConn("for a denied client")
}

// TestHTTPDenied checks a plain HTTP request gets a 403 naming the rule.
func TestHTTPDenied(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	c, err := net.Dial("tcp", w.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x.ads.test:80\r\nUser-Agent: t\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(resp), "HTTP/1.1 403 Forbidden") || !strings.Contains(string(resp), `rule "ads"`) {
		t.Errorf("response = %q, want 403 naming rule ads", resp)
	}
	e := w.waitLog(bySrcPort(c))
	w.want(e, map[string]any{"action": "deny", "rule": "ads", "protocol": "http", "fqdn": "x.ads.test", "fqdn_source": "host"})
}

// TestSilentAndPartialClients checks that a client that sends nothing and
// one that stalls mid-hello are closed and logged while a good client is
// served at the same time.
func TestSilentAndPartialClients(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	silent, err := net.Dial("tcp", w.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	partial, err := net.Dial("tcp", w.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	partial.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00}) // a hello that never completes

	if _, _, err := dialTLS(w, "good.test"); err != nil {
		t.Fatalf("good client while others stall: %v", err)
	}
	for _, c := range []net.Conn{silent, partial} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("stalled client got data, want close")
		}
	}
	e := w.waitLog(bySrcPort(silent))
	w.want(e, map[string]any{"action": "deny", "protocol": "server-first", "fqdn_source": "none"})
	e = w.waitLog(bySrcPort(partial))
	w.want(e, map[string]any{"action": "deny", "protocol": "tls"})
	if r, _ := e["reason"].(string); !strings.Contains(r, "client_hello timeout") {
		t.Errorf("partial hello reason = %q, want client_hello timeout", r)
	}
}

// TestGarbageClient sends bytes that are neither TLS nor HTTP nor SSH.
func TestGarbageClient(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	c, err := net.Dial("tcp", w.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("\x00\x01garbage\r\n"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("garbage client got data, want close")
	}
	e := w.waitLog(bySrcPort(c))
	w.want(e, map[string]any{"action": "deny", "protocol": "unknown"})
}

// TestReportOnly checks that with enforce: false a denied connection is
// relayed and logged as a deny that was not enforced, while destination
// safety still holds: a restricted address no rule opened stays refused.
func TestReportOnly(t *testing.T) {
	w := newWorld(t, baseRecords, `policy:
  enforce: false
  rules:
    - {name: ads, action: deny, fqdn: ["x.ads.test"], destinations: ["127.0.0.0/8"]}
    - {name: nodest, action: deny, fqdn: ["nodest.test"]}
`)
	c, raw, err := dialTLS(w, "x.ads.test")
	if err != nil {
		t.Fatalf("report-only: handshake = %v, want it relayed", err)
	}
	c.Close()
	e := w.waitLog(bySrcPort(raw))
	w.want(e, map[string]any{"action": "deny", "rule": "ads", "enforced": false})

	_, raw, err = dialTLS(w, "nodest.test")
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("report-only to a restricted address: handshake = %v, want access denied", err)
	}
	e = w.waitLog(bySrcPort(raw))
	w.want(e, map[string]any{"action": "deny", "rule": "nodest", "enforced": true})
}

// TestUpstreamRefused checks an allowed connection whose server refuses:
// a TLS client gets an internal_error alert, and the log names the dial
// error.
func TestUpstreamRefused(t *testing.T) {
	w := newWorldTo(t, baseRecords, basePolicy, closedPort(t))

	_, raw, err := dialTLS(w, "good.test")
	if err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Errorf("handshake = %v, want an internal_error alert", err)
	}
	raw.Close()
	e := w.waitLog(bySrcPort(raw))
	w.want(e, map[string]any{"action": "allow", "rule": "good", "protocol": "tls"})
	if r, _ := e["reason"].(string); !strings.Contains(r, "upstream failed") || !strings.Contains(r, "refused") {
		t.Errorf("log reason = %q, want the dial error", r)
	}
}
