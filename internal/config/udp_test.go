package config

import (
	"errors"
	"strings"
	"testing"
)

func TestUDPListener(t *testing.T) {
	c, err := Parse("udp.yaml", []byte(`listeners:
  - {name: t, mode: transparent, address: 0.0.0.0:15001, tproxy: true, udp: true}
  - {name: d, mode: transparent, address: 0.0.0.0:15002, tproxy: true, udp: true, quic_deny: drop}
  - {name: tcp, mode: transparent, address: 0.0.0.0:15003, tproxy: true}
dns: {address: 127.0.0.1:5353, upstreams: [127.0.0.1], strip_h3: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		udp  bool
		deny QUICDeny
	}{{true, QUICClose}, {true, QUICDrop}, {false, ""}} {
		if l := c.Listeners[i]; l.UDP != want.udp || l.QUICDeny != want.deny {
			t.Errorf("listener %s: udp %v, quic_deny %q; want %v, %q", l.Name, l.UDP, l.QUICDeny, want.udp, want.deny)
		}
	}
	if !c.DNS.StripH3 {
		t.Errorf("dns.strip_h3: false, want true")
	}
}

func TestUDPListenerErrors(t *testing.T) {
	for _, tt := range []struct {
		name, yaml string
		want       []string
	}{
		{"udp without tproxy", `listeners:
  - {name: t, mode: transparent, address: 0.0.0.0:15001, udp: true}
`, []string{"bad.yaml:2: listeners[0].udp: needs tproxy: true"}},
		{"udp on another mode", `listeners:
  - {name: s, mode: sni, address: 127.0.0.1:8443, udp: true}
`, []string{"bad.yaml:2: listeners[0].udp: applies only to mode transparent"}},
		{"quic_deny without udp", `listeners:
  - {name: t, mode: transparent, address: 0.0.0.0:15001, tproxy: true, quic_deny: drop}
`, []string{"bad.yaml:2: listeners[0].quic_deny: applies only with udp: true"}},
		{"quic_deny unknown", `listeners:
  - {name: t, mode: transparent, address: 0.0.0.0:15001, tproxy: true, udp: true, quic_deny: reset}
`, []string{`bad.yaml:2: listeners[0].quic_deny: unknown quic_deny "reset"; want close or drop`}},
		{"udp with proxy_protocol", `listeners:
  - {name: t, mode: transparent, address: 0.0.0.0:15001, tproxy: true, udp: true, proxy_protocol: true}
`, []string{"bad.yaml:2: listeners[0].proxy_protocol: a UDP listener (udp: true) cannot read PROXY protocol headers"}},
		{"strip_h3 not a bool", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
dns: {address: 127.0.0.1:5353, upstreams: [127.0.0.1], strip_h3: yes please}
`, []string{"bad.yaml:2: dns.strip_h3: want true or false"}},
	} {
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
