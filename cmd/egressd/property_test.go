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
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/gateway"
	"github.com/egressd/egressd/internal/testnet"
)

// TestExplainMatchesGateway is a property test: for random policies and
// random connections, the decision a running gateway logs equals the one
// `egressd explain` prints for the same source, destination and name.
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
// match fields.
func randomPolicy(rng *rand.Rand, port uint16) string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy:\n  enforce: true\n  default: %s\n  rules:\n", pick(rng, []string{"allow", "deny"}))
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
		if dst == "" || !strings.HasSuffix(dst, fmt.Sprintf(":%d", upstream)) {
			t.Fatalf("policy %d: log has no destination for %s: %v", iter, p.name, got)
		}
		code, out, errOut := runCmd("explain", "--config", path, "--src", p.src, "--dst", dst, "--sni", p.name, "--json")
		if code != 0 {
			t.Fatalf("explain exit %d: %s", code, errOut)
		}
		var want struct{ Action, Rule string }
		if err := json.Unmarshal([]byte(out), &want); err != nil {
			t.Fatalf("explain output %q: %v", out, err)
		}
		if got["action"] != want.Action || got["rule"] != want.Rule {
			t.Errorf("policy %d, src %s, name %s -> %s:\ngateway: action %v rule %q (%v)\nexplain: action %s rule %q\n%s",
				iter, p.src, p.name, dst, got["action"], got["rule"], got["reason"], want.Action, want.Rule, text)
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
