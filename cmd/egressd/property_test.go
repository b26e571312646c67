package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/fqdn"
	"github.com/egressd/egressd/internal/gateway"
	"github.com/egressd/egressd/internal/policy"
	"github.com/egressd/egressd/internal/testnet"
)

// TestExplainMatchesGateway is a property test: for random policies (in
// enforce and in report-only mode) and random connections, the decision a
// running gateway logs (action, rule, enforced) equals the one `egressd
// explain` prints for the same source, destination and name.
// explain is what operators trust before a rollout; it must not drift from
// what the data path does.
func TestExplainMatchesGateway(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d (set EGRESSD_PROPERTY_SEED to replay)", seed)
	if s := os.Getenv("EGRESSD_PROPERTY_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	rng := rand.New(rand.NewPCG(seed, 0))
	upstream := sinkServer(t)
	const policies, names = 40, 10
	compared := 0
	for i := 0; i < policies; i++ {
		compared += checkOnePolicy(t, rng, upstream, i, names)
	}
	t.Logf("%d connections through %d random policies: gateway and explain agree", compared, policies)
}

var (
	propNames    = []string{"a.test", "b.a.test", "c.b.a.test", "x.test", "y.x.test", "other.test"}
	propPatterns = []string{"a.test", "*.a.test", "b.a.test", "*.b.a.test", "x.test", "*.x.test", "*"}
	propSources  = []string{"127.0.0.1/32", "127.0.0.3/32", "127.0.0.1/32", "127.0.0.3/32", "127.0.0.0/8", "10.0.0.0/8"}
	propDests    = []string{"127.0.0.1/32", "127.0.0.0/8", "198.51.100.0/24"}
	propClients  = []string{"127.0.0.1", "127.0.0.3"}
	propAnswers  = []string{"127.0.0.1", "127.0.0.2"}
)

func pick[T any](rng *rand.Rand, xs []T) T { return xs[rng.IntN(len(xs))] }

func some(rng *rand.Rand, xs []string, max int) string {
	n := 1 + rng.IntN(max)
	var out []string
	for range n {
		out = append(out, fmt.Sprintf("%q", pick(rng, xs)))
	}
	return "[" + strings.Join(out, ", ") + "]"
}

// randomPolicy writes a policy block of 1–6 rules, each with 1–4 of the
// match fields, in enforce or in report-only mode.
func randomPolicy(rng *rand.Rand, port uint16) string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy:\n  enforce: %v\n  default: %s\n  rules:\n", rng.IntN(2) == 0, pick(rng, []string{"allow", "deny"}))
	for r := range 1 + rng.IntN(6) {
		action := "allow"
		if rng.IntN(10) < 3 {
			action = "deny"
		}
		var fields []string
		for len(fields) == 0 {
			if rng.IntN(3) > 0 {
				fields = append(fields, "fqdn: "+some(rng, propPatterns, 2))
			}
			if rng.IntN(2) == 0 {
				fields = append(fields, "sources: "+some(rng, propSources, 2))
			}
			if rng.IntN(3) == 0 {
				fields = append(fields, "destinations: "+some(rng, propDests, 2))
			}
			if rng.IntN(4) == 0 {
				fields = append(fields, fmt.Sprintf("ports: [%d]", pick(rng, []uint16{port, 1})))
			}
		}
		fmt.Fprintf(&b, "    - {name: r%d, action: %s, %s}\n", r, action, strings.Join(fields, ", "))
	}
	return b.String()
}

func checkOnePolicy(t *testing.T, rng *rand.Rand, upstream uint16, iter, names int) int {
	records := map[string][]string{}
	for _, n := range propNames {
		records[n] = []string{pick(rng, propAnswers)}
	}
	resolver := testnet.DNS(t, records)
	text := fmt.Sprintf(`listeners:
  - {name: sni, mode: sni, address: 127.0.0.1:0, upstream_port: %d}
resolver: %s
timeouts: {first_bytes: 200ms, client_hello: 2s, connect: 1s, idle: 10s}
%s`, upstream, resolver, randomPolicy(rng, upstream))
	path := filepath.Join(t.TempDir(), "egressd.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("random config does not load: %v\n%s", err, text)
	}
	pol, err := cfg.Compile()
	if err != nil {
		t.Fatal(err)
	}
	var logs testnet.Buffer
	g := gateway.New(&gateway.State{Config: cfg, Policy: pol},
		slog.New(slog.NewTextHandler(io.Discard, nil)), accesslog.New(&logs, "json"))
	ctx, cancel := context.WithCancel(context.Background())
	if err := g.Bind(ctx); err != nil {
		t.Fatal(err)
	}
	addr := g.Addrs()["sni"]
	done := make(chan struct{})
	go func() { g.Serve(ctx, time.Second); close(done) }()
	defer func() { cancel(); <-done }()

	type probe struct{ src, name, local string }
	var probes []probe
	for range names {
		p := probe{src: pick(rng, propClients), name: pick(rng, propNames)}
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(p.src)}}).Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		p.local = c.LocalAddr().String()
		tc := tls.Client(c, &tls.Config{ServerName: p.name, InsecureSkipVerify: true})
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		tc.Handshake() // allowed: the sink closes; denied: an alert. Either way, done.
		c.Close()
		probes = append(probes, p)
	}
	for _, p := range probes {
		got := waitEntry(t, &logs, p.local)
		dst, _ := got["dst"].(string)
		// A name denied whatever its address is refused unresolved
		// (policy.DecideName), and logged without a destination: explain
		// is asked with the address it would have resolved to, as an
		// operator would. The rule may then differ: without an address
		// the gateway names the first rule that decides on what it knows,
		// while a deny rule with destinations before it may match the
		// address (same action and enforced, another rule name).
		byName := dst == ""
		if byName {
			dst = fmt.Sprintf("%s:%d", records[p.name][0], upstream)
		}
		if !strings.HasSuffix(dst, fmt.Sprintf(":%d", upstream)) {
			t.Fatalf("policy %d: log has no destination for %s: %v", iter, p.name, got)
		}
		code, out, errOut := runCmd("explain", "--config", path, "--src", p.src, "--dst", dst, "--sni", p.name, "--json")
		if code != 0 {
			t.Fatalf("explain exit %d: %s", code, errOut)
		}
		var want struct {
			Action, Rule string
			Enforced     bool
		}
		if err := json.Unmarshal([]byte(out), &want); err != nil {
			t.Fatalf("explain output %q: %v", out, err)
		}
		if byName && got["rule"] != want.Rule && got["action"] == want.Action {
			t.Logf("policy %d, src %s, name %s: refused unresolved by rule %q; explain, given its address %s, names %q", iter, p.src, p.name, got["rule"], dst, want.Rule)
			want.Rule, _ = got["rule"].(string)
		}
		if got["action"] != want.Action || got["rule"] != want.Rule || got["enforced"] != want.Enforced {
			t.Errorf("policy %d, src %s, name %s -> %s:\ngateway: action %v rule %q enforced %v (%v)\nexplain: action %s rule %q enforced %v\n%s",
				iter, p.src, p.name, dst, got["action"], got["rule"], got["enforced"], got["reason"], want.Action, want.Rule, want.Enforced, text)
		}
	}
	return len(probes)
}

// sinkServer accepts on 127.0.0.1 and closes each connection after reading
// its first bytes; allowed probes end there.
func sinkServer(t *testing.T) uint16 {
	ln := testnet.Listen(t)
	testnet.Serve(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 4096))
	})
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// waitEntry returns the access-log line of the connection from local.
func waitEntry(t *testing.T, logs *testnet.Buffer, local string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(logs.String(), "\n") {
			var e map[string]any
			if json.Unmarshal([]byte(line), &e) == nil && e["src"] == local {
				return e
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log line for %s:\n%s", local, logs.String())
	return nil
}

// TestExplainMatchesDecision drives random policies, over every match
// field (users and protocols too, which the sni listener of
// TestExplainMatchesGateway cannot vary), and random connections, in
// enforce and in report-only mode, through explain and through the
// gateway's decision as the gateway makes it for a connection whose
// destination is known: policy.DecideDial on the input it builds
// (addresses as the socket gives them, the name only if fqdn.Normalize
// accepts it), then Decision.Enforced. Action, rule and enforced must
// agree. (The gateway's own decide functions resolve names and read
// sockets, so they are compared live in TestExplainMatchesGateway.)
func TestExplainMatchesDecision(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d (set EGRESSD_PROPERTY_SEED to replay)", seed)
	if s := os.Getenv("EGRESSD_PROPERTY_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	const policies, conns = 30, 25
	for i := range policies {
		enforce := rng.IntN(2) == 0
		text := decisionConfig(rng, enforce)
		path := filepath.Join(t.TempDir(), "egressd.yaml")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatalf("random config does not load: %v\n%s", err, text)
		}
		pol, err := cfg.Compile()
		if err != nil {
			t.Fatal(err)
		}
		for range conns {
			src := netip.MustParseAddr(pick(rng, decSources))
			dst := netip.AddrPortFrom(netip.MustParseAddr(pick(rng, decDests)), pick(rng, decPorts))
			sni, proto, user := pick(rng, decNames), pick(rng, decProtocols), pick(rng, decUsers)
			args := []string{"explain", "--config", path, "--src", src.String(), "--dst", dst.String(), "--json"}
			for _, f := range [][2]string{{"--sni", sni}, {"--protocol", proto}, {"--user", user}} {
				if f[1] != "" {
					args = append(args, f[0], f[1])
				}
			}
			code, out, errOut := runCmd(args...)
			if code != 0 {
				t.Fatalf("explain %q: exit %d: %s", args, code, errOut)
			}
			var got struct {
				Action, Rule string
				Enforced     bool
			}
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("explain output %q: %v", out, err)
			}

			// The gateway's side. A connection that says nothing is
			// server-first; a ClientHello with a server name is tls:
			// what explain assumes when --protocol is not given.
			in := policy.Input{Src: src, Dst: dst.Addr(), Port: dst.Port(), User: user, Protocol: proto}
			if name, ok := fqdn.Normalize(sni); ok {
				in.FQDN = name
			}
			if in.Protocol == "" {
				in.Protocol = "server-first"
				if sni != "" {
					in.Protocol = "tls"
				}
			}
			d := pol.DecideDial(in)
			want := d.Enforced(cfg.Policy.Enforce, dst.IsValid())
			if got.Action != d.Action.String() || got.Rule != d.Rule || got.Enforced != want {
				t.Errorf("policy %d, %q:\nexplain: %s %q enforced %v\ngateway: %s %q enforced %v (%s)\n%s",
					i, args[3:], got.Action, got.Rule, got.Enforced, d.Action, d.Rule, want, d.Reason, text)
			}
		}
	}
	t.Logf("%d connections through %d random policies: explain and the gateway's decision agree", policies*conns, policies)
}

var (
	decPatterns  = []string{"a.test", "*.a.test", "x.test", "*.x.test", "xn--bcher-kva.test", "*"}
	decSrcNets   = []string{"10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32", "127.0.0.0/8", "10.1.2.3/32"}
	decDstNets   = []string{"198.51.100.0/24", "10.0.0.0/8", "169.254.169.254/32", "2001:db8::/32", "127.0.0.1/32"}
	decPortSets  = []string{"[443]", `[22, "8000-8999"]`, "[443, 8443]"}
	decUserSets  = []string{"[ci-runner]", "[bot, ci-runner]"}
	decProtoSets = []string{"[tls]", "[ssh, server-first]", "[http, unknown]", "[tls, http]"}

	decSources   = []string{"10.1.2.3", "192.168.7.7", "2001:db8::5", "::ffff:10.1.2.3", "127.0.0.1"}
	decDests     = []string{"198.51.100.7", "10.9.9.9", "169.254.169.254", "127.0.0.1", "2001:db8::1", "::ffff:198.51.100.7", "::ffff:169.254.169.254"}
	decPorts     = []uint16{443, 22, 8443, 8080}
	decNames     = []string{"", "a.test", "B.A.Test.", "c.b.a.test", "x.test", "10.0.0.1", "bücher.test", "xn--bcher-kva.test", "bad_name!"}
	decProtocols = []string{"", "tls", "http", "ssh", "server-first", "unknown"}
	decUsers     = []string{"", "ci-runner", "bot"}
)

// decisionConfig writes a config with two proxy users and 1–7 rules, each
// with 1–5 of every match field.
func decisionConfig(rng *rand.Rand, enforce bool) string {
	const hash = "$2a$10$nS3ZyEI3cMaQ.gHRsUQzn.rnw2CnXtSDc4D0YeajXIpkA8mZ4kyMW"
	var b strings.Builder
	fmt.Fprintf(&b, `listeners:
  - {name: proxy, mode: explicit, address: 127.0.0.1:0}
users:
  - {name: ci-runner, password_hash: %q}
  - {name: bot, password_hash: %q}
policy:
  enforce: %v
  default: %s
  rules:
`, hash, hash, enforce, pick(rng, []string{"allow", "deny"}))
	for r := range 1 + rng.IntN(7) {
		action := pick(rng, []string{"allow", "allow", "deny"})
		var fields []string
		for len(fields) == 0 {
			if rng.IntN(2) == 0 {
				fields = append(fields, "fqdn: "+some(rng, decPatterns, 2))
			}
			if rng.IntN(3) == 0 {
				fields = append(fields, "sources: "+some(rng, decSrcNets, 2))
			}
			if rng.IntN(3) == 0 {
				fields = append(fields, "destinations: "+some(rng, decDstNets, 2))
			}
			if rng.IntN(4) == 0 {
				fields = append(fields, "ports: "+pick(rng, decPortSets))
			}
			if rng.IntN(4) == 0 {
				fields = append(fields, "users: "+pick(rng, decUserSets))
			}
			if rng.IntN(4) == 0 {
				fields = append(fields, "protocols: "+pick(rng, decProtoSets))
			}
		}
		fmt.Fprintf(&b, "    - {name: r%d, action: %s, %s}\n", r, action, strings.Join(fields, ", "))
	}
	return b.String()
}
