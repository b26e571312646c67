package gateway

import (
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/socks5"
	"github.com/egressd/egressd/internal/testnet"
)

// TestDeniedNamesNeverResolved: a name that the policy denies whatever its
// address is refused without a DNS query, through every way a client can
// name a destination that egressd resolves itself (SNI on an sni listener,
// CONNECT, SOCKS5, a plain-HTTP proxy request): no name leaves the gateway,
// not even as a look-up an attacker's name server would log. Allowed names
// are still resolved; in report-only mode every name is (see docs/policy.md).
func TestDeniedNamesNeverResolved(t *testing.T) {
	for _, enforce := range []bool{true, false} {
		t.Run(fmt.Sprintf("enforce=%v", enforce), func(t *testing.T) {
			dnsAddr, asked := testnet.DNSAsked(t, records{"good.test": {"127.0.0.1"}})
			s := serveConfig(t, fmt.Sprintf(`listeners:
  - {name: sni, mode: sni, address: 127.0.0.1:0, upstream_port: 443}
  - {name: proxy, mode: explicit, address: 127.0.0.1:0}
resolver: %s
timeouts: {first_bytes: 200ms, client_hello: 2s, connect: 1s, idle: 10s}
policy:
  enforce: %v
  default: deny
  rules:
    - {name: good, action: allow, fqdn: ["good.test"], destinations: ["127.0.0.0/8"]}
    - {name: ssh-net, action: allow, ports: [22], destinations: ["198.51.100.0/24"]}
    - {name: ads, action: deny, fqdn: ["*.ads.test"]}
`, dnsAddr, enforce), time.Second)
			sni, proxy := s.Addrs()["sni"], s.Addrs()["proxy"]

			// SNI on the sni listener.
			c, err := net.Dial("tcp", sni.String())
			if err != nil {
				t.Fatal(err)
			}
			tc := tls.Client(c, &tls.Config{ServerName: "sni.secret.attacker.test", InsecureSkipVerify: true})
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			tc.Handshake()
			tc.Close()

			// CONNECT and a plain-HTTP proxy request.
			for _, req := range []string{
				"CONNECT connect.secret.attacker.test:443 HTTP/1.1\r\nHost: connect.secret.attacker.test:443\r\n\r\n",
				"GET http://plain.secret.attacker.test/x HTTP/1.1\r\nHost: plain.secret.attacker.test\r\n\r\n",
				"CONNECT x.ads.test:443 HTTP/1.1\r\nHost: x.ads.test:443\r\n\r\n",
			} {
				c, br := rawProxy(t, proxy)
				c.Write([]byte(req))
				line, _ := br.ReadString('\n')
				if enforce && !strings.Contains(line, "403") {
					t.Errorf("%q: got %q, want a 403", strings.Fields(req)[1], line)
				}
				c.Close()
			}

			// SOCKS5 with a domain name.
			c2, br := rawProxy(t, proxy)
			name := "socks.secret.attacker.test"
			msg := []byte{socks5.Version, 1, 0, socks5.Version, 1, 0, 3, byte(len(name))}
			msg = append(append(msg, name...), 1, 187)
			c2.Write(msg)
			reply := make([]byte, 4)
			if _, err := br.Discard(2); err == nil {
				br.Read(reply)
			}
			if enforce && reply[1] != 0x02 {
				t.Errorf("SOCKS5 reply %#x, want 0x02 (not allowed)", reply[1])
			}
			c2.Close()

			// An allowed name is still resolved (and the name on the
			// ssh-net rule's port would be too: an address may allow it).
			c3, br3 := rawProxy(t, proxy)
			c3.Write([]byte("CONNECT good.test:1 HTTP/1.1\r\nHost: good.test:1\r\n\r\n"))
			br3.ReadString('\n')
			c3.Close()
			c4, br4 := rawProxy(t, proxy)
			c4.Write([]byte("CONNECT ssh.maybe.test:22 HTTP/1.1\r\nHost: ssh.maybe.test:22\r\n\r\n"))
			br4.ReadString('\n')
			c4.Close()

			var got []string
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) {
				got = asked()
				if slices.Contains(got, "good.test") && slices.Contains(got, "ssh.maybe.test") {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if !slices.Contains(got, "good.test") || !slices.Contains(got, "ssh.maybe.test") {
				t.Errorf("resolver was asked %q; want good.test and ssh.maybe.test among them", got)
			}
			leaked := slices.ContainsFunc(got, func(n string) bool {
				return strings.HasSuffix(n, ".attacker.test") || strings.HasSuffix(n, ".ads.test")
			})
			if enforce && leaked {
				t.Errorf("denied names reached the resolver: %q", got)
			}
			if !enforce && !leaked {
				t.Errorf("report-only mode resolved %q; it lets denied names through, so it must resolve them", got)
			}
			if enforce {
				e := (&world{t: t, logs: s.logs}).waitLog(matching(map[string]any{"fqdn": "socks.secret.attacker.test"}))
				if r, _ := e["reason"].(string); !strings.Contains(r, "not resolved") {
					t.Errorf("reason %q does not say the name was not resolved", r)
				}
			}
		})
	}
}

// TestUnresolvableAllowedName: an allowed name that does not resolve is
// refused as a server that cannot be reached (TLS internal_error), not as
// a policy deny, and the reason leads with the resolver's answer — what a
// new user on a machine without outside DNS sees first.
func TestUnresolvableAllowedName(t *testing.T) {
	w := newWorld(t, records{}, `policy:
  default: deny
  rules:
    - {name: any, action: allow, fqdn: ["*"]}
`)
	c, err := net.Dial("tcp", w.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := c.LocalAddr().String()
	tc := tls.Client(c, &tls.Config{ServerName: "nowhere.test", InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Errorf("handshake for a name that does not resolve: %v, want an internal_error alert", err)
	}
	e := w.waitLog(func(e entry) bool { return e["src"] == src })
	if r, _ := e["reason"].(string); !strings.HasPrefix(r, "resolve nowhere.test") {
		t.Errorf("reason %q does not lead with the resolver's answer", r)
	}
}

// TestFilterOnByDefault: a dns section that says nothing of filter refuses
// a query for a name no allow rule could match, and that name never
// reaches the upstream: the forwarder is no way out for a denied name.
func TestFilterOnByDefault(t *testing.T) {
	upstream, asked := testnet.DNSAsked(t, records{"good.test": {"198.51.100.7"}})
	s := serveConfig(t, fmt.Sprintf(`listeners:
  - {name: sni, mode: sni, address: 127.0.0.1:0, upstream_port: 443}
dns: {address: 127.0.0.1:0, upstreams: [%q]}
policy:
  default: deny
  rules:
    - {name: good, action: allow, fqdn: ["good.test"]}
`, upstream), time.Second)
	ask := func(name string) int {
		m := new(dns.Msg)
		m.SetQuestion(name+".", dns.TypeA)
		r, err := dns.Exchange(m, s.DNSAddr().String())
		if err != nil {
			t.Fatalf("query %s: %v", name, err)
		}
		return r.Rcode
	}
	if rc := ask("secret.attacker.test"); rc != dns.RcodeRefused {
		t.Errorf("query for a denied name: rcode %s, want REFUSED", dns.RcodeToString[rc])
	}
	if rc := ask("good.test"); rc != dns.RcodeSuccess {
		t.Errorf("query for an allowed name: rcode %s, want NOERROR", dns.RcodeToString[rc])
	}
	if got := asked(); slices.Contains(got, "secret.attacker.test") {
		t.Errorf("the denied name reached the upstream: %q", got)
	}
}

// TestUnresolvableReportOnly: in report-only mode a name the policy would
// deny but lets through, and that does not resolve, is refused for the
// missing address, not for the policy: internal_error, as the README's
// first try on a machine without outside DNS shows.
func TestUnresolvableReportOnly(t *testing.T) {
	w := newWorld(t, records{}, "policy: {enforce: false, default: deny}\n")
	c, err := net.Dial("tcp", w.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, &tls.Config{ServerName: "nowhere.test", InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Errorf("report-only, a name that does not resolve: %v, want an internal_error alert", err)
	}
}
