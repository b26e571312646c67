package main

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// The operating tests run egressd as a real process, so that signals,
// file watching and the exit code are the program's own. The test binary
// is that program: TestMain runs main when asked to by the environment.
const runMainEnv = "EGRESSD_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		return
	}
	relayProcs() // the in-process gateways' relay loops get their Ps, as in run
	os.Exit(m.Run())
}

// egressdProc is egressd running as a child process.
type egressdProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	done chan struct{}
	code int

	mu     sync.Mutex
	stderr []string
	stdout []string
	news   chan struct{} // closed and replaced at every new line
}

func startEgressdProc(t *testing.T, cfgPath string) *egressdProc {
	t.Helper()
	return startEgressdCmd(t, exec.Command(os.Args[0], "run", "--config", cfgPath))
}

// startEgressdCmd is startEgressdProc for a command of the caller's (that
// runs egressd in the end).
func startEgressdCmd(t *testing.T, cmd *exec.Cmd) *egressdProc {
	t.Helper()
	p := &egressdProc{t: t, done: make(chan struct{}), news: make(chan struct{})}
	p.cmd = cmd
	p.cmd.Env = append(os.Environ(), runMainEnv+"=1")
	var so io.Reader = strings.NewReader("") // the caller's own Stdout
	if p.cmd.Stdout == nil {
		so, _ = p.cmd.StdoutPipe()
	}
	se, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	read := func(r io.Reader, dst *[]string) {
		defer wg.Done()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			p.mu.Lock()
			*dst = append(*dst, sc.Text())
			close(p.news)
			p.news = make(chan struct{})
			p.mu.Unlock()
		}
	}
	go read(so, &p.stdout)
	go read(se, &p.stderr)
	go func() {
		wg.Wait()
		p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("egressd stderr:\n%s", strings.Join(p.lines(true), "\n"))
		}
	})
	p.waitFor(true, "watching the config file")
	return p
}

func (p *egressdProc) lines(stderr bool) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if stderr {
		return append([]string(nil), p.stderr...)
	}
	return append([]string(nil), p.stdout...)
}

// waitFor waits until a line of stderr (or stdout) contains every one of
// subs, and returns it.
func (p *egressdProc) waitFor(stderr bool, subs ...string) string {
	p.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		p.mu.Lock()
		ls, news := p.stderr, p.news
		if !stderr {
			ls = p.stdout
		}
		for _, l := range ls {
			ok := true
			for _, s := range subs {
				ok = ok && strings.Contains(l, s)
			}
			if ok {
				p.mu.Unlock()
				return l
			}
		}
		p.mu.Unlock()
		select {
		case <-news:
		case <-p.done:
			p.t.Fatalf("egressd exited (%d) before printing %q", p.code, subs)
		case <-deadline:
			p.t.Fatalf("egressd did not print %q within 10s", subs)
		}
	}
}

func (p *egressdProc) signal(s syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(s); err != nil {
		p.t.Fatal(err)
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startDNS answers A queries for names with 127.0.0.1, NXDOMAIN otherwise.
func startDNS(t *testing.T, names ...string) string {
	records := make(map[string][]string, len(names))
	for _, n := range names {
		records[n] = []string{"127.0.0.1"}
	}
	return testnet.DNS(t, records)
}

// startSink runs a TLS server that reads a connection to its end, then
// answers the SHA-256 of what it read, in hex, and closes.
func startSink(t *testing.T) int {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{testnet.Cert(t)}})
	if err != nil {
		t.Fatal(err)
	}
	testnet.Serve(t, ln, func(c net.Conn) {
		h := sha256.New()
		io.Copy(h, c)
		io.WriteString(c, hex.EncodeToString(h.Sum(nil)))
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// dialName opens a TLS connection with SNI name through the listener at
// addr; the error is the handshake's (a denied name gets an alert).
func dialName(t *testing.T, addr, name string) (*tls.Conn, error) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { raw.Close() })
	c := tls.Client(raw, &tls.Config{ServerName: name, InsecureSkipVerify: true})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, c.Handshake()
}

// wantDecision checks that a new connection for name is allowed or denied.
func wantDecision(t *testing.T, addr, name string, allowed bool) {
	t.Helper()
	c, err := dialName(t, addr, name)
	if allowed && err != nil {
		t.Errorf("%s: %v, want allowed", name, err)
	}
	if !allowed && (err == nil || !strings.Contains(err.Error(), "access denied")) {
		t.Errorf("%s: handshake error %v, want access denied", name, err)
	}
	if c != nil {
		c.Close()
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue returns the value of the exposition line that starts with
// series (name and labels as printed), or -1.
func metricValue(t *testing.T, adminAddr, series string) float64 {
	t.Helper()
	_, body := httpGet(t, "http://"+adminAddr+"/metrics")
	for _, l := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return -1
}
