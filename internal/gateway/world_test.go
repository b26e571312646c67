package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/testnet"
)

// TestMain gives the process a P for each relay loop beyond those the
// tests use, as egressd's run does (see relay.Loops): a gateway made
// without WithLoops relays on one loop for every two Ps.
func TestMain(m *testing.M) {
	runtime.GOMAXPROCS(2 * runtime.GOMAXPROCS(0))
	os.Exit(m.Run())
}

// world is a small loopback network for in-process gateway tests: a TLS
// echo server, a DNS server with fixed records, and a gateway whose sni
// listener routes to the echo server's port.
type world struct {
	t        *testing.T
	echo     netip.AddrPort
	gw       *Gateway
	addr     netip.AddrPort // the sni listener
	logs     *testnet.Buffer
	cancel   context.CancelFunc
	served   chan struct{}
	serverCh chan string // SNI each TLS connection reached the server with
}

// records maps names to answers for the test DNS server.
type records map[string][]string

func newWorld(t *testing.T, rec records, policyYAML string) *world {
	t.Helper()
	return newWorldTo(t, rec, policyYAML, 0)
}

// newWorldTo is newWorld with the sni listener's upstream_port set to port
// instead of the echo server's (0 keeps the echo server).
func newWorldTo(t *testing.T, rec records, policyYAML string, port uint16) *world {
	t.Helper()
	return newWorldListener(t, rec, policyYAML, port, "")
}

// defaultWorldTimeouts are the timeouts of a world unless a test sets its own.
const defaultWorldTimeouts = "{first_bytes: 200ms, client_hello: 2s, connect: 2s, idle: 1m}"

// newWorldListener is newWorldTo with more keys for the sni listener
// (listenerYAML, e.g. "proxy_protocol: true").
func newWorldListener(t *testing.T, rec records, policyYAML string, port uint16, listenerYAML string) *world {
	return newWorldFull(t, rec, policyYAML, port, listenerYAML, defaultWorldTimeouts)
}

// newWorldTimeouts is newWorldTo with the timeouts block given as YAML.
func newWorldTimeouts(t *testing.T, rec records, policyYAML string, port uint16, timeouts string) *world {
	return newWorldFull(t, rec, policyYAML, port, "", timeouts)
}

func newWorldFull(t *testing.T, rec records, policyYAML string, port uint16, listenerYAML, timeouts string) *world {
	t.Helper()
	w := &world{t: t, serverCh: make(chan string, 64)}
	w.echo = w.startEcho()
	if port == 0 {
		port = w.echo.Port()
	}
	dnsAddr := testnet.DNS(t, rec)
	cfgText := fmt.Sprintf(`listeners:
  - name: sni
    mode: sni
    address: 127.0.0.1:0
    upstream_port: %d
    %s
resolver: %s
timeouts: %s
%s`, port, listenerYAML, dnsAddr, timeouts, policyYAML)
	s := serveConfig(t, cfgText, time.Second)
	w.gw, w.logs, w.cancel, w.served = s.Gateway, s.logs, s.cancel, s.done
	w.addr = w.gw.Addrs()["sni"]
	return w
}

// noServerConn fails the test if the echo server has seen a connection
// (one the gateway must not have let through, for why).
func (w *world) noServerConn(why string) {
	w.t.Helper()
	select {
	case sni := <-w.serverCh:
		w.t.Errorf("server saw a connection (SNI %q) %s", sni, why)
	default:
	}
}

// startEcho runs a TLS server that echoes what it reads.
func (w *world) startEcho() netip.AddrPort {
	cert := selfSigned(w.t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			w.serverCh <- h.ServerName
			return nil, nil
		},
	})
	if err != nil {
		w.t.Fatal(err)
	}
	testnet.Serve(w.t, ln, func(c net.Conn) { io.Copy(c, c) })
	return netip.MustParseAddrPort(ln.Addr().String())
}

// selfSigned is the echo server's certificate, for good.test.
func selfSigned(t *testing.T) tls.Certificate { return testnet.Cert(t, "good.test") }

// entry is one parsed access-log line.
type entry map[string]any

// waitLog returns the first log line for which match is true, polling
// until it appears.
func (w *world) waitLog(match func(entry) bool) entry {
	w.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		text := w.logs.String()
		sc := bufio.NewScanner(strings.NewReader(text))
		for sc.Scan() {
			var e entry
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				w.t.Fatalf("access log line is not JSON: %q", sc.Text())
			}
			if match(e) {
				return e
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	w.t.Fatalf("no matching access-log line; log so far:\n%s", w.logs.String())
	return nil
}

func bySrcPort(c net.Conn) func(entry) bool {
	src := c.LocalAddr().String()
	return func(e entry) bool { return e["src"] == src }
}

// want checks fields of a log entry.
func (w *world) want(e entry, fields map[string]any) {
	w.t.Helper()
	for k, v := range fields {
		if got := e[k]; fmt.Sprint(got) != fmt.Sprint(v) {
			w.t.Errorf("log %s = %v, want %v (line %v)", k, got, v, e)
		}
	}
}

// logText is the access log so far.
func (w *world) logText() string {
	return w.logs.String()
}

// liveConns is how many client connections the gateway is tracking.
func (w *world) liveConns() int {
	w.gw.mu.Lock()
	defer w.gw.mu.Unlock()
	return len(w.gw.conns)
}

// served is a gateway running a config given as YAML text, for tests that
// need listeners the sni world does not have.
type served struct {
	*Gateway
	logs   *testnet.Buffer
	cancel context.CancelFunc // starts the drain
	done   chan struct{}      // closed when Serve has returned
}

// serveConfig parses text, binds and serves it with the given drain grace,
// its access log in s.logs; the test's cleanup stops it.
func serveConfig(tb testing.TB, text string, grace time.Duration) *served {
	tb.Helper()
	logs := &testnet.Buffer{}
	s := serveConfigTo(tb, text, grace, logs)
	s.logs = logs
	return s
}

// serveConfigTo is serveConfig with the access log written to access
// (benchmarks discard it, or keep only what they check).
func serveConfigTo(tb testing.TB, text string, grace time.Duration, access io.Writer) *served {
	tb.Helper()
	cfg, err := config.Parse("test.yaml", []byte(text))
	if err != nil {
		tb.Fatalf("config: %v\n%s", err, text)
	}
	pol, err := cfg.Compile()
	if err != nil {
		tb.Fatal(err)
	}
	s := &served{done: make(chan struct{})}
	s.Gateway = New(&State{Config: cfg, Policy: pol}, slog.New(slog.DiscardHandler), accesslog.New(access, "json"))
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if err := s.Bind(ctx); err != nil {
		tb.Fatal(err)
	}
	go func() { s.Serve(ctx, grace); close(s.done) }()
	tb.Cleanup(func() { cancel(); <-s.done })
	return s
}
