package gateway

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/egressd/egressd/internal/socks5"
)

// TestRestrictedSpellings: each explicit entry point (CONNECT, SOCKS5 by
// address and by name, plain HTTP) refuses an IPv6 spelling of a
// restricted IPv4 address, under a rule that allows everything from
// loopback by source alone, so that only destination safety stands in
// the way: the log says which embedded address made it restricted. Before
// policy.Restricted looked through these forms, each was dialled.
func TestRestrictedSpellings(t *testing.T) {
	w := newProxyWorldFrom(t, records{
		"nat64.test":  {"64:ff9b::a9fe:a9fe"},
		"teredo.test": {"2001:0:c633:6407::80ff:fffe"}, // client 127.0.0.1
	}, `    - {name: loopback, action: allow, sources: ["127.0.0.0/8"]}`)
	restricted := func(a, via string) string {
		return fmt.Sprintf("%s (embedding %s)", a, via)
	}
	httpTests := []struct {
		name, method, target, reason string
	}{
		{"CONNECT IPv4-translated", "CONNECT", "[::ffff:0:7f00:1]:80", restricted("::ffff:0:7f00:1", "127.0.0.1")},
		{"CONNECT IPv4-compatible", "CONNECT", "[::7f00:1]:80", restricted("::7f00:1", "127.0.0.1")},
		{"CONNECT 6to4", "CONNECT", "[2002:a9fe:a9fe::1]:80", restricted("2002:a9fe:a9fe::1", "169.254.169.254")},
		{"CONNECT NAT64 local-use", "CONNECT", "[64:ff9b:1:101:1:101:a9fe:a9fe]:80", restricted("64:ff9b:1:101:1:101:a9fe:a9fe", "169.254.169.254")},
		{"CONNECT a name with a NAT64 answer", "CONNECT", "nat64.test:80", restricted("64:ff9b::a9fe:a9fe", "169.254.169.254")},
		{"CONNECT IPv4-mapped", "CONNECT", "[::ffff:7f00:1]:80", "destination 127.0.0.1 is restricted"},
		{"plain HTTP Teredo", "GET", "http://[2001:0:c633:6407::80ff:fffe]:80/", restricted("2001:0:c633:6407::80ff:fffe", "127.0.0.1")},
		{"plain HTTP ISATAP", "GET", "http://[2001:db8::5efe:a00:1]/", restricted("2001:db8::5efe:a00:1", "10.0.0.1")},
	}
	for _, tt := range httpTests {
		t.Run(tt.name, func(t *testing.T) {
			c, br := rawProxy(t, w.proxy)
			host := strings.TrimPrefix(tt.target, "http://")
			host, _, _ = strings.Cut(host, "/")
			fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: %s\r\n\r\n", tt.method, tt.target, host)
			if resp, _ := readResponse(t, br, tt.method); resp.StatusCode != 403 {
				t.Errorf("%s %s = %d, want 403", tt.method, tt.target, resp.StatusCode)
			}
			c.Close()
			e := w.waitLog(bySrcPort(c))
			w.want(e, map[string]any{"action": "deny", "rule": "loopback", "enforced": true})
			if r, _ := e["reason"].(string); !strings.Contains(r, tt.reason) {
				t.Errorf("reason %q, want it to say %q", r, tt.reason)
			}
		})
	}
	socksTests := []struct {
		name   string
		req    socks5.Request
		reason string
	}{
		{"SOCKS5 Teredo client", socks5.Request{Addr: netip.MustParseAddr("2001:0:c633:6407::80ff:fffe")}, restricted("2001:0:c633:6407::80ff:fffe", "127.0.0.1")},
		{"SOCKS5 NAT64", socks5.Request{Addr: netip.MustParseAddr("64:ff9b::a00:1")}, restricted("64:ff9b::a00:1", "10.0.0.1")},
		{"SOCKS5 a name with a Teredo answer", socks5.Request{Domain: "teredo.test"}, restricted("2001:0:c633:6407::80ff:fffe", "127.0.0.1")},
	}
	for _, tt := range socksTests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.Cmd, tt.req.Port = socks5.CmdConnect, 80
			c, br := rawProxy(t, w.proxy)
			c.Write(socks5.AppendRequest([]byte{5, 1, 0}, tt.req))
			got := make([]byte, 4)
			if _, err := io.ReadFull(br, got); err != nil || got[3] != socks5.ReplyNotAllowed {
				t.Errorf("SOCKS5 CONNECT %v: reply %x %v, want code 02", tt.req, got, err)
			}
			c.Close()
			e := w.waitLog(bySrcPort(c))
			if r, _ := e["reason"].(string); e["action"] != "deny" || !strings.Contains(r, tt.reason) {
				t.Errorf("log %v, want a deny saying %q", e, tt.reason)
			}
		})
	}
}
