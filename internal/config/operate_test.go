package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestOperateSections(t *testing.T) {
	const yaml = `listeners:
  - {name: lb, mode: sni, address: 127.0.0.1:3128, proxy_protocol: true, proxy_protocol_from: ["10.0.0.0/8", "2001:db8::1", "::ffff:192.0.2.0/120"]}
  - {name: plain, mode: sni, address: 127.0.0.1:3129}
admin:
  address: 127.0.0.1:9090
  pprof: true
limits:
  max_connections: 100000
  max_connections_per_source: 2000
  max_pending_handshakes: 10000
shutdown_grace: 2m
shutdown_delay: 5s
busy_poll: 50us
`
	c, err := Parse("ok.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	got := []any{c.Listeners[0].ProxyProtocol, c.Listeners[0].ProxyProtocolFrom, c.Listeners[1].ProxyProtocol, c.Admin, c.Limits, c.ShutdownGrace, c.ShutdownDelay, c.BusyPoll}
	want := []any{true, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::1/128"), netip.MustParsePrefix("192.0.2.0/24")}, false, Admin{Address: addrPort("127.0.0.1:9090"), PProf: true, Line: 5},
		Limits{MaxConnections: 100000, MaxConnectionsPerSource: 2000, MaxPendingHandshakes: 10000}, 2 * time.Minute, 5 * time.Second, 50 * time.Microsecond}
	if diff := cmp.Diff(want, got, cmpOpts...); diff != "" {
		t.Errorf("Parse mismatch (-want +got):\n%s", diff)
	}
}

func TestOperateErrors(t *testing.T) {
	const one = "listeners: [{name: a, mode: sni, address: 127.0.0.1:9090}]\n"
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"proxy_protocol_from without proxy_protocol", "listeners:\n  - {name: a, mode: sni, address: 127.0.0.1:9090, proxy_protocol_from: [10.0.0.0/8]}\n",
			[]string{"bad.yaml:2: listeners[0].proxy_protocol_from: applies only with proxy_protocol: true"}},
		{"proxy_protocol_from bad CIDR", "listeners:\n  - name: a\n    mode: sni\n    address: 127.0.0.1:9090\n    proxy_protocol: true\n    proxy_protocol_from: [10.0.0.1/8, lb.example]\n",
			[]string{"bad.yaml:6: listeners[0].proxy_protocol_from[0]: 10.0.0.1/8 has host bits set", `bad.yaml:6: listeners[0].proxy_protocol_from[1]: invalid CIDR "lb.example"`}},
		{"admin bad address", one + "admin: {address: localhost:9090}\n",
			[]string{`bad.yaml:2: admin.address: invalid address "localhost:9090"`}},
		{"admin without address", one + "admin: {pprof: true}\n",
			[]string{`bad.yaml:2: admin: missing key "address"`}},
		{"admin on a listener's address", one + "admin: {address: 127.0.0.1:9090}\n",
			[]string{`bad.yaml:2: admin.address: 127.0.0.1:9090 is listener "a"'s address (line 1)`}},
		{"admin unknown key", one + "admin:\n  address: 127.0.0.1:1\n  metrics: true\n",
			[]string{`bad.yaml:4: unknown key "metrics" in admin`}},
		{"negative limit", one + "limits:\n  max_connections: -1\n",
			[]string{"bad.yaml:3: limits.max_connections: want a whole number from 0 (no limit) to 2147483647, got -1"}},
		{"limit too large", one + "limits:\n  max_pending_handshakes: 99999999999\n",
			[]string{"bad.yaml:3: limits.max_pending_handshakes: want a whole number"}},
		{"limit not a number", one + "limits:\n  max_connections_per_source: lots\n",
			[]string{`bad.yaml:3: limits.max_connections_per_source: want a whole number, got "lots"`}},
		{"grace without unit", one + "shutdown_grace: 30\n",
			[]string{"bad.yaml:2: shutdown_grace: 30 has no unit"}},
		{"grace zero", one + "shutdown_grace: 0s\n",
			[]string{"bad.yaml:2: shutdown_grace: duration 0s must be positive"}},
		{"delay without unit", one + "shutdown_delay: 5\n",
			[]string{"bad.yaml:2: shutdown_delay: 5 has no unit"}},
		{"delay too long", one + "shutdown_grace: 1h\nshutdown_delay: 10m\n",
			[]string{"bad.yaml:3: shutdown_delay: 10m0s is longer than 5m0s"}},
		{"busy_poll without unit", one + "busy_poll: 50\n",
			[]string{"bad.yaml:2: busy_poll: 50 has no unit"}},
		{"busy_poll too long", one + "busy_poll: 5ms\n",
			[]string{"bad.yaml:2: busy_poll: 5ms is longer than 1ms"}},
		{"busy_poll negative", one + "busy_poll: -50us\n",
			[]string{"bad.yaml:2: busy_poll: duration -50us must be positive"}},
		{"proxy_protocol not a bool", "listeners: [{name: a, mode: sni, address: 127.0.0.1:1, proxy_protocol: v2}]\n",
			[]string{`bad.yaml:1: listeners[0].proxy_protocol: want true or false, got "v2"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tt.yaml))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse(%q) = %v, want Errors", tt.yaml, err)
			}
			got := strings.Split(err.Error(), "\n")
			ok := len(got) == len(tt.want)
			for i := 0; ok && i < len(got); i++ {
				ok = strings.Contains(got[i], tt.want[i])
			}
			if !ok {
				t.Errorf("Parse(%q) errors:\n%s\nwant, in order:\n%s", tt.yaml, err, strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestHash(t *testing.T) {
	const a = "listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]\n"
	ca, _ := Parse("x.yaml", []byte(a))
	ca2, _ := Parse("y.yaml", []byte(a))
	cb, _ := Parse("x.yaml", []byte(a+"# changed\n"))
	if ca.Hash != ca2.Hash || ca.Hash == cb.Hash || len(ca.Hash) != 16 {
		t.Errorf("Hash: same file %q, %q; changed file %q; want equal, then different, 16 digits", ca.Hash, ca2.Hash, cb.Hash)
	}
}
