package config

import (
	"errors"
	"strings"
	"testing"
)

// brokenFiles are configs with mistakes, each with the problems Parse must
// report: one "FILE:LINE: message" substring per problem, in line order, and
// nothing else.
var brokenFiles = []struct {
	name string
	yaml string
	want []string
}{
	{"empty file", "", []string{"bad.yaml:1: empty config: at least one listener is required"}},
	{"only comments", "# nothing\n", []string{"bad.yaml:1: empty config"}},
	{"only a document marker", "---\n", []string{"bad.yaml:1: empty config"}},
	{"not a mapping", "- a\n- b\n", []string{"bad.yaml:1: config: want a mapping, got a list"}},
	{"bad indentation", `listeners:
  - name: a
    mode: sni
   address: 127.0.0.1:1
`, []string{"bad.yaml:2: yaml: did not find expected '-' indicator"}},
	{"unclosed flow list", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}
policy: {}
`, []string{"bad.yaml:2: yaml: did not find expected ',' or ']'"}},
	{"syntax error on line 1", "listeners: a: b\n", []string{"bad.yaml:1: yaml: mapping values are not allowed in this context"}},
	{"control character", "listeners:\n  - name: a\x01\n", []string{"bad.yaml:2: yaml: control characters are not allowed"}},
	{"tab indentation", "listeners:\n\t- name: a\n", []string{"bad.yaml:2: yaml: found character that cannot start any token"}},
	{"two documents", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
---
policy: {}
`, []string{"bad.yaml:2: a second YAML document"}},

	{"unknown keys", `listeners:
  - name: a
    mode: sni
    adress: 127.0.0.1:1
polcy:
  default: deny
log:
  fromat: json
`, []string{
		`bad.yaml:2: listeners[0]: missing key "address"`,
		`bad.yaml:4: unknown key "adress" in listeners[0]; allowed: name, mode, address, sni_destination, upstream_port, tproxy, tunnel_sni`,
		`bad.yaml:5: unknown key "polcy" at the top level; allowed: listeners, resolver, mark, timeouts, log, users, policy`,
		`bad.yaml:8: unknown key "fromat" in log; allowed: format, output`,
	}},
	{"repeated key", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
policy:
  default: deny
  default: allow
`, []string{"bad.yaml:4: policy.default: repeated (first at line 3)"}},
	{"wrong types", `listeners: {name: a}
resolver: [127.0.0.1]
mark: abc
timeouts: 5s
log:
  format: [json]
  output: 3
policy:
  enforce: yes
  default: 0
  rules: {name: x}
`, []string{
		"bad.yaml:1: listeners: want a list of listeners, got a mapping",
		"bad.yaml:2: resolver: want a string, got a list",
		`bad.yaml:3: mark: want an integer, got "abc"`,
		`bad.yaml:4: timeouts: want a mapping, got "5s"`,
		"bad.yaml:6: log.format: want a string, got a list",
		"bad.yaml:7: log.output: want a string, got 3",
		`bad.yaml:9: policy.enforce: want true or false, got "yes"`,
		"bad.yaml:10: policy.default: want a string, got 0",
		"bad.yaml:11: policy.rules: want a list of rules, got a mapping",
	}},
	{"bad values", `listeners:
  - name: a
    mode: explicit
    address: 127.0.0.1:1
  - name: b
    mode: socks
    address: 127.0.0.1:2
  - name: c
    mode: transparent
    address: 127.0.0.1:3
    sni_destination: maybe
    tproxy: "true"
resolver: localhost
mark: -1
log: {format: xml, output: ""}
policy:
  default: reject
  rules:
    - {name: r, action: permit}
`, []string{
		`bad.yaml:6: listeners[1].mode: unknown mode "socks"; want transparent, sni or explicit`,
		`bad.yaml:11: listeners[2].sni_destination: unknown sni_destination "maybe"; want verify or resolve or trust`,
		`bad.yaml:12: listeners[2].tproxy: want true or false, got "true"`,
		`bad.yaml:13: resolver: invalid address "localhost"`,
		"bad.yaml:14: mark: want a decimal or 0x-hex integer from 0 to 4294967295, got -1",
		`bad.yaml:15: log.format: unknown log format "xml"; want json or text`,
		"bad.yaml:15: log.output: empty string",
		`bad.yaml:17: policy.default: unknown action "reject"; want allow or deny`,
		`bad.yaml:19: policy.rules[0].action: unknown action "permit"; want allow or deny`,
	}},
	{"listener addresses", `listeners:
  - {name: a, mode: sni, address: "localhost:8443"}
  - {name: b, mode: sni, address: ":8443"}
  - {name: c, mode: sni, address: "127.0.0.1:0x50"}
  - {name: d, mode: sni, address: 127.0.0.1}
  - {name: e, mode: sni, address: "127.0.0.1:65536"}
  - {name: f, mode: sni, address: "[::1]:8443"}
  - {name: g, mode: sni, address: "[::1]:8443"}
resolver: 1.2.3.4:0
`, []string{
		`bad.yaml:2: listeners[0].address: invalid address "localhost:8443"; want IP:port`,
		`bad.yaml:3: listeners[1].address: invalid address ":8443"`,
		`bad.yaml:4: listeners[2].address: invalid address "127.0.0.1:0x50"`,
		`bad.yaml:5: listeners[3].address: invalid address "127.0.0.1"`,
		`bad.yaml:6: listeners[4].address: invalid address "127.0.0.1:65536"`,
		"bad.yaml:8: listeners[6].address: address [::1]:8443 already used at line 7",
		`bad.yaml:9: resolver: invalid address "1.2.3.4:0"`,
	}},
	{"missing keys and duplicates", `listeners:
  - name: a
    address: 127.0.0.1:1
  - mode: sni
    address: 127.0.0.1:2
  - name: a
    mode: sni
    address: 127.0.0.1:3
policy:
  rules:
    - name: github
      fqdn: [github.com]
    - name: github
      action: deny
    - action: allow
`, []string{
		`bad.yaml:2: listeners[0]: missing key "mode"`,
		`bad.yaml:4: listeners[1]: missing key "name"`,
		`bad.yaml:6: listeners[2].name: listener name "a" already used at line 2`,
		`bad.yaml:11: policy.rules[0]: missing key "action"`,
		`bad.yaml:13: policy.rules[1].name: rule name "github" already used at line 11`,
		`bad.yaml:15: policy.rules[2]: missing key "name"`,
	}},
	{"no listeners", "policy: {default: deny}\n", []string{`bad.yaml:1: missing key "listeners"`}},
	{"empty listeners", "listeners: []\n", []string{"bad.yaml:1: listeners: at least one listener is required"}},
	{"null listeners", "listeners:\n", []string{"bad.yaml:1: listeners: want a list of listeners, got nothing"}},
	{"fields of another mode", `listeners:
  - name: t
    mode: transparent
    address: 0.0.0.0:15001
    upstream_port: 443
  - name: s
    mode: sni
    address: 127.0.0.1:8443
    sni_destination: verify
    tproxy: true
    upstream_port: 0
`, []string{
		"bad.yaml:5: listeners[0].upstream_port: applies only to mode sni",
		"bad.yaml:9: listeners[1].sni_destination: applies only to mode transparent",
		"bad.yaml:10: listeners[1].tproxy: applies only to mode transparent",
		"bad.yaml:11: listeners[1].upstream_port: port 0 out of range 1-65535",
	}},
	{"durations", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
timeouts:
  first_bytes: 5 parsecs
  client_hello: 0s
  connect: -1s
  idle: 15
`, []string{
		`bad.yaml:3: timeouts.first_bytes: invalid duration "5 parsecs"`,
		"bad.yaml:4: timeouts.client_hello: duration 0s must be positive",
		"bad.yaml:5: timeouts.connect: duration -1s must be positive",
		"bad.yaml:6: timeouts.idle: 15 has no unit; write e.g. 300ms, 5s or 15m",
	}},
	{"ports", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1, upstream_port: 65536}]
policy:
  rules:
    - name: r
      action: allow
      ports:
        - 0
        - 65536
        - "9000-8000"
        - abc
        - 1-70000
        - [22]
        - 443
      fqdn: []
`, []string{
		"bad.yaml:1: listeners[0].upstream_port: port 65536 out of range 1-65535",
		"bad.yaml:7: policy.rules[0].ports[0]: port 0 out of range 1-65535",
		"bad.yaml:8: policy.rules[0].ports[1]: port 65536 out of range 1-65535",
		`bad.yaml:9: policy.rules[0].ports[2]: port range "9000-8000" is reversed`,
		`bad.yaml:10: policy.rules[0].ports[3]: invalid port "abc"`,
		`bad.yaml:11: policy.rules[0].ports[4]: invalid port range "1-70000"`,
		"bad.yaml:12: policy.rules[0].ports[5]: want a port (443) or a range",
		"bad.yaml:14: policy.rules[0].fqdn: empty list; list at least one of names or leave the key out",
	}},
	{"cidrs", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
policy:
  rules:
    - name: r
      action: allow
      destinations:
        - 10.0.0.0/8
        - 10.0.0.0/33
        - 10.1.2.3/24
        - example.com
        - fe80::1%eth0
      sources:
`, []string{
		`bad.yaml:8: policy.rules[0].destinations[1]: invalid CIDR "10.0.0.0/33"`,
		"bad.yaml:9: policy.rules[0].destinations[2]: 10.1.2.3/24 has host bits set; write 10.1.2.0/24 for the network or 10.1.2.3/32 for the address",
		`bad.yaml:10: policy.rules[0].destinations[3]: invalid CIDR "example.com"`,
		`bad.yaml:11: policy.rules[0].destinations[4]: invalid CIDR "fe80::1%eth0"`,
		"bad.yaml:12: policy.rules[0].sources: want a list of CIDRs, got nothing",
	}},
	{"fqdn patterns", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
policy:
  rules:
    - name: r
      action: allow
      fqdn:
        - github.com
        - "foo*.com"
        - "*.*.com"
        - a.*.com
        - 10.0.0.1
        - ""
        - a..b
        - 443
`, []string{
		`bad.yaml:8: policy.rules[0].fqdn[1]: fqdn pattern "foo*.com": "*" is allowed only as the whole first label`,
		`bad.yaml:9: policy.rules[0].fqdn[2]: fqdn pattern "*.*.com"`,
		`bad.yaml:10: policy.rules[0].fqdn[3]: fqdn pattern "a.*.com"`,
		`bad.yaml:11: policy.rules[0].fqdn[4]: fqdn pattern "10.0.0.1": an IP address, not a name; match addresses with destinations`,
		"bad.yaml:12: policy.rules[0].fqdn[5]: empty string",
		`bad.yaml:13: policy.rules[0].fqdn[6]: fqdn pattern "a..b": empty label`,
		"bad.yaml:14: policy.rules[0].fqdn[7]: want a string, got 443",
	}},
	// The path names where the alias is used, the line where the value is written.
	{"alias used in the wrong place", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
policy:
  rules:
    - {name: r, action: allow, fqdn: &names [github.com]}
    - {name: s, action: allow, ports: *names}
`, []string{`bad.yaml:4: policy.rules[1].ports[0]: invalid port "github.com"`}},
	{"undefined alias", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
policy:
  rules:
    - {name: s, action: allow, ports: *ports}
`, []string{"bad.yaml:4: yaml: unknown anchor 'ports' referenced"}},
	{"block mapping indentation", `listeners:
  - name: a
    mode: sni
    address: 127.0.0.1:1
policy:
  default: deny
 rules: []
`, []string{"bad.yaml:7: yaml: did not find expected key"}},
	{"dns mistakes", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
dns:
  address: localhost:53
  upstreams: [127.0.0.1:5353, 8.8.8.8:99999, dns.google]
  remember: 10
  filter: yes please
  max_entries: 0
  rate_limit: -5
  strip_ech: 1
  cache: big
  clients: [10.0.0.1/8]
`, []string{
		`bad.yaml:3: dns.address: invalid address "localhost:53"`,
		`bad.yaml:4: dns.upstreams[1]: invalid address "8.8.8.8:99999"`,
		`bad.yaml:4: dns.upstreams[2]: invalid address "dns.google"`,
		`bad.yaml:5: dns.remember: 10 has no unit`,
		`bad.yaml:6: dns.filter: want true or false, got "yes please"`,
		`bad.yaml:7: dns.max_entries: want an integer from 1 to 10000000, got 0`,
		`bad.yaml:8: dns.rate_limit: want an integer from 1 to 1000000, got -5`,
		`bad.yaml:9: dns.strip_ech: want true or false, got 1`,
		`bad.yaml:10: unknown key "cache" in dns`,
		`bad.yaml:11: dns.clients[0]: 10.0.0.1/8 has host bits set`,
	}},
	{"dns loop and missing upstreams", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
dns:
  address: 127.0.0.1:5353
  upstreams: ["127.0.0.1:5353"]
`, []string{`bad.yaml:4: dns.upstreams[0]: 127.0.0.1:5353 is dns.address itself`}},
	{"dns share over the cap", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
dns:
  address: 127.0.0.1:5353
  upstreams: [127.0.0.1]
  max_entries_per_client: 2000
  max_entries: 1000
`, []string{`bad.yaml:5: dns.max_entries_per_client: 2000 is more than max_entries (1000)`}},
	{"dns share not positive", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
dns: {address: 127.0.0.1:5353, upstreams: [127.0.0.1], max_entries_per_client: 0}
`, []string{`bad.yaml:2: dns.max_entries_per_client: want an integer from 1 to 10000000, got 0`}},
	{"dns tcp caps", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
dns:
  address: 127.0.0.1:5353
  upstreams: [127.0.0.1]
  max_tcp_connections_per_source: 20
  max_tcp_connections: 10
`, []string{`bad.yaml:5: dns.max_tcp_connections_per_source: 20 is more than max_tcp_connections (10)`}},
	{"dns tcp cap not positive", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
dns: {address: 127.0.0.1:5353, upstreams: [127.0.0.1], max_tcp_connections: 0}
`, []string{`bad.yaml:2: dns.max_tcp_connections: want an integer from 1 to 1000000, got 0`}},
	{"dns without upstreams", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
dns: {address: 127.0.0.1:5353}
`, []string{`bad.yaml:2: dns: missing key "upstreams"`}},
	{"unknown protocol", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
policy:
  rules:
    - {name: r, action: allow, protocols: [ssh, smtp]}
    - {name: s, action: allow, protocols: []}
`, []string{
		`bad.yaml:4: policy.rules[0].protocols[1]: unknown protocol "smtp"; want tls or http or ssh or server-first or unknown`,
		`bad.yaml:5: policy.rules[1].protocols: empty list`,
	}},
	{"bad ja4", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
users: [{name: ci, password_hash: "$2a$04$8Zq9wWmVmZ6e0Z7xH0kq2eY1n1tHqQ9E0m2xk0wq0kHk1fV5sJQ8e"}]
policy:
  rules:
    - name: r
      action: allow
      ja4:
        - t13d1312h2_f57a46bbacb6_ab7e3b40a677
        - T13d1312h2_f57a46bbacb6_ab7e3b40a677
        - t13d1312h2_f57a46bbacb6
        - 42
    - {name: s, action: allow, ja4: []}
    - {name: t, action: allow, protocols: [ssh], ja4: [t13d1312h2_f57a46bbacb6_ab7e3b40a677]}
    - {name: u, action: allow, users: [ci], ja4: [t13d1312h2_f57a46bbacb6_ab7e3b40a677]}
`, []string{
		`bad.yaml:9: policy.rules[0].ja4[1]: JA4 "T13d1312h2_f57a46bbacb6_ab7e3b40a677": protocol "T" is not t (TCP), q (QUIC) or d (DTLS)`,
		`bad.yaml:10: policy.rules[0].ja4[2]: "t13d1312h2_f57a46bbacb6" is not a JA4 fingerprint; want 36 characters like t13d1516h2_8daaf6152771_e5627efa2ab1`,
		`bad.yaml:11: policy.rules[0].ja4[3]: want a string, got`,
		`bad.yaml:12: policy.rules[1].ja4: empty list`,
		`bad.yaml:13: policy.rules[2].ja4: only TLS connections have a fingerprint, and protocols does not list tls`,
		`bad.yaml:14: policy.rules[3].ja4: a rule with users never matches a fingerprint`,
	}},
	{"rule not a mapping", `listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]
policy:
  rules:
    - github
`, []string{`bad.yaml:4: policy.rules[0]: want a mapping, got "github"`}},
}

func TestParseErrors(t *testing.T) {
	for _, tt := range brokenFiles {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("bad.yaml", []byte(tt.yaml))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse(%q) = %+v, %v, want Errors", tt.yaml, c, err)
			}
			if c != nil {
				t.Errorf("Parse(%q) returned a config with its errors", tt.yaml)
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
