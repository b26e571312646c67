package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// egressd's listener ports and the sni listener's address, in gw.
const (
	portTransparent  = "15001"
	portTProxy       = "15002"
	portTrust        = "15003"
	portTransparent6 = "15004"
	sniListenAddr    = gwCliAddr + ":8443"
	ppListenAddr     = gwCliAddr + ":8444" // sni, behind a load balancer: PROXY protocol
	resolverAddr     = "127.0.0.1:5353"
)

// configTemplate is the gateway's config for every test; %s is the
// client_hello timeout.
const configTemplate = `listeners:
  - name: transparent
    mode: transparent
    address: 0.0.0.0:` + portTransparent + `
    sni_destination: verify
  - name: trust
    mode: transparent
    address: 0.0.0.0:` + portTrust + `
    sni_destination: trust
  - name: transparent6
    mode: transparent
    address: "[::]:` + portTransparent6 + `"
    sni_destination: verify
  - name: tproxy
    mode: transparent
    address: 0.0.0.0:` + portTProxy + `
    tproxy: true
    sni_destination: resolve
  - name: sni
    mode: sni
    address: ` + sniListenAddr + `
    upstream_port: 443
  - name: sni-pp
    mode: sni
    address: ` + ppListenAddr + `
    upstream_port: 443
    proxy_protocol: true
resolver: ` + resolverAddr + `
admin: {address: "` + mgmtAddr + `"}
mark: 0x100
timeouts: {first_bytes: 300ms, client_hello: %s, connect: 5s, idle: 15m}
log: {format: json}
policy:
  enforce: true
  default: deny
  rules:
    - {name: allowed, action: allow, fqdn: ["allowed.test", "*.allowed.test"], ports: [443, 8443]}
    - {name: lab-ssh, action: allow, destinations: ["10.99.2.0/24"], sources: ["10.99.1.0/24"], ports: [22]}
    - {name: smtp, action: allow, destinations: ["198.51.100.10/32"], ports: [25]}
    - {name: ads, action: deny, fqdn: ["*.ads.test"]}
`

// listenerCount is how many "listening" lines egressd prints once bound.
const listenerCount = 6

// startEgressd writes the config, runs egressd in gw and waits until all its
// listeners are bound.
func startEgressd(t testing.TB, gw *netns, clientHello time.Duration) (*process, *accessLog) {
	t.Helper()
	return startEgressdConfig(t, gw, fmt.Sprintf(configTemplate, clientHello), listenerCount)
}

// startEgressdConfig runs egressd in gw with the config text cfgText and
// waits for its listeners "listening" lines (one per listener; the DNS
// forwarder prints one too).
func startEgressdConfig(t testing.TB, gw *netns, cfgText string, listeners int) (*process, *accessLog) {
	t.Helper()
	bin := egressdBinary(t)
	cfg := filepath.Join(t.TempDir(), "egressd.yaml")
	if err := os.WriteFile(cfg, []byte(cfgText), 0o644); err != nil {
		t.Fatal(err)
	}
	log := newAccessLog()
	listening := make(chan struct{}, listeners)
	onStderr := func(line string) {
		if strings.Contains(line, "listening") {
			listening <- struct{}{}
		}
	}
	p := startProcess(t, "egressd", gw.command(context.Background(), bin, "run", "--config", cfg), log.add, onStderr)
	log.proc = p
	deadline := time.After(10 * time.Second)
	for range listeners {
		select {
		case <-listening:
		case <-p.done:
			t.Fatalf("egressd exited before listening:\n%s", p.output())
		case <-deadline:
			t.Fatalf("egressd did not log %d listening lines within 10s:\n%s", listeners, p.output())
		}
	}
	return p, log
}

// accessLine is one line of egressd's access log.
type accessLine struct {
	Time       string          `json:"time"`
	Msg        string          `json:"msg"`
	Listener   string          `json:"listener"`
	User       string          `json:"user"`
	Src        string          `json:"src"`
	Dst        string          `json:"dst"`
	FQDN       string          `json:"fqdn"`
	FQDNSource string          `json:"fqdn_source"`
	Protocol   string          `json:"protocol"`
	ALPN       json.RawMessage `json:"alpn"`
	ECH        bool            `json:"ech"`
	JA4        string          `json:"ja4"`
	Rule       string          `json:"rule"`
	Action     string          `json:"action"`
	Enforced   bool            `json:"enforced"`
	Reason     string          `json:"reason"`
	BytesUp    int64           `json:"bytes_up"`
	BytesDown  int64           `json:"bytes_down"`
	DurationMS float64         `json:"duration_ms"`

	// DNS query lines ("kind":"dns").
	Kind   string `json:"kind"`
	QName  string `json:"qname"`
	QType  string `json:"qtype"`
	Rcode  string `json:"rcode"`
	Result string `json:"result"`

	raw string
}

// accessLog collects egressd's stdout, one decoded line at a time.
type accessLog struct {
	proc *process

	mu      sync.Mutex
	lines   []accessLine
	changed chan struct{} // closed and replaced at every new line
}

func newAccessLog() *accessLog { return &accessLog{changed: make(chan struct{})} }

func (l *accessLog) add(raw string) {
	var line accessLine
	if err := json.Unmarshal([]byte(raw), &line); err != nil {
		line = accessLine{Msg: "undecodable: " + err.Error()}
	}
	line.raw = raw
	l.mu.Lock()
	l.lines = append(l.lines, line)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// mark is the position of the next line; pass it to expect. A nil log (no
// egressd in the world) has no lines.
func (l *accessLog) mark() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// find waits for the first line at or after from that match selects, and
// fails the test if none comes within 15 s.
func (l *accessLog) find(t testing.TB, from int, what string, match func(accessLine) bool) accessLine {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		l.mu.Lock()
		lines, changed := l.lines[min(from, len(l.lines)):], l.changed
		for _, line := range lines {
			if match(line) {
				l.mu.Unlock()
				return line
			}
		}
		l.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no access-log line for %s within 15s; egressd printed:\n%s", what, l.proc.output())
		}
	}
}

// expect waits for the line that match selects, at or after from, and checks
// it against w. A nil log checks nothing and returns a zero line.
func (l *accessLog) expect(t testing.TB, from int, what string, match func(accessLine) bool, w want) accessLine {
	t.Helper()
	if l == nil {
		return accessLine{}
	}
	line := l.find(t, from, what, match)
	t.Logf("access log: %s", line.raw)
	w.check(t, line)
	return line
}

// bySrc selects the line of the connection from src ("ip:port").
func bySrc(src string) func(accessLine) bool {
	return func(l accessLine) bool { return l.Src == src }
}

// byDst selects any line of a connection to dst ("ip:port").
func byDst(dst string) func(accessLine) bool {
	return func(l accessLine) bool { return l.Dst == dst }
}

// byListener selects any line of a listener.
func byListener(name string) func(accessLine) bool {
	return func(l accessLine) bool { return l.Listener == name }
}

// want is what a test expects of an access-log line; empty fields are not
// checked.
type want struct {
	listener   string
	dst        string
	fqdn       string
	fqdnSource string
	protocol   []string // any of
	rule       *string  // nil: not checked; "" is the default rule
	action     string
	reasonHas  string // a substring of reason
	bytes      int64  // minimum of bytes_up and of bytes_down; 0: not checked
}

func rule(name string) *string { return &name }

// check reports every field of line that differs from w.
func (w want) check(t testing.TB, line accessLine) {
	t.Helper()
	var errs []string
	field := func(name, got, want string) {
		if want != "" && got != want {
			errs = append(errs, fmt.Sprintf("%s = %q, want %q", name, got, want))
		}
	}
	if line.Msg != "conn" {
		errs = append(errs, fmt.Sprintf("msg = %q, want %q", line.Msg, "conn"))
	}
	if _, err := time.Parse(time.RFC3339Nano, line.Time); err != nil {
		errs = append(errs, fmt.Sprintf("time = %q, want an RFC 3339 time", line.Time))
	}
	if !line.Enforced { // the config has enforce: true
		errs = append(errs, "enforced = false, want true")
	}
	field("listener", line.Listener, w.listener)
	field("dst", line.Dst, w.dst)
	field("fqdn", line.FQDN, w.fqdn)
	field("fqdn_source", line.FQDNSource, w.fqdnSource)
	field("action", line.Action, w.action)
	if len(w.protocol) > 0 && !slices.Contains(w.protocol, line.Protocol) {
		errs = append(errs, fmt.Sprintf("protocol = %q, want one of %q", line.Protocol, w.protocol))
	}
	if w.rule != nil && line.Rule != *w.rule {
		errs = append(errs, fmt.Sprintf("rule = %q, want %q", line.Rule, *w.rule))
	}
	if w.reasonHas != "" && !strings.Contains(line.Reason, w.reasonHas) {
		errs = append(errs, fmt.Sprintf("reason = %q, want it to contain %q", line.Reason, w.reasonHas))
	}
	if w.bytes > 0 && (line.BytesUp < w.bytes || line.BytesDown < w.bytes) {
		errs = append(errs, fmt.Sprintf("bytes_up = %d, bytes_down = %d, want both >= %d", line.BytesUp, line.BytesDown, w.bytes))
	}
	if len(errs) > 0 {
		t.Errorf("access log:\n\t%s\nline: %s", strings.Join(errs, "\n\t"), line.raw)
	}
}
