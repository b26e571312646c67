package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// opWorld is a running egressd with an sni listener in front of a TLS sink,
// names resolved by a test DNS server, and its config file at path.
type opWorld struct {
	p                *egressdProc
	path             string
	listen, adminAdr string
	sinkPort         int
	dns              string
	extra            string // more top-level YAML
}

func (w *opWorld) config(rules string) string {
	return fmt.Sprintf(`listeners:
  - {name: sni, mode: sni, address: %s, upstream_port: %d}
resolver: %s
admin: {address: %s}
%s
policy:
  default: deny
  rules:
%s`, w.listen, w.sinkPort, w.dns, w.adminAdr, w.extra, rules)
}

const (
	allowA = "    - {name: a, action: allow, fqdn: [a.test], destinations: [127.0.0.0/8]}\n"
	allowB = "    - {name: b, action: allow, fqdn: [b.test], destinations: [127.0.0.0/8]}\n"
)

// writeReplace writes the config as editors do: a new file renamed over
// the old one.
func writeReplace(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newOpWorld(t *testing.T, extra, rules string) *opWorld {
	t.Helper()
	w := opWorldAt(t, filepath.Join(t.TempDir(), "egressd.yaml"))
	w.extra = extra
	writeReplace(t, w.path, w.config(rules))
	w.p = startEgressdProc(t, w.path)
	return w
}

// opWorldAt is an opWorld whose config is to be at path, with neither the
// file nor the process yet.
func opWorldAt(t *testing.T, path string) *opWorld {
	t.Helper()
	return &opWorld{
		path:     path,
		listen:   fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		adminAdr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		sinkPort: startSink(t),
		dns:      startDNS(t, "a.test", "b.test"),
	}
}

// publish writes text as dir/version/egressd.yaml and points the link
// dir/link at version, swapped in by a rename, as the kubelet swaps a
// ConfigMap's ..data and deploy tools a release's current.
func publish(t *testing.T, dir, version, link, text string) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(dir, version), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, version, "egressd.yaml"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(version, filepath.Join(dir, link+"_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, link+"_tmp"), filepath.Join(dir, link)); err != nil {
		t.Fatal(err)
	}
}

// sendHalf writes n pseudo-random bytes to w, hashing them into h.
func send(t *testing.T, w io.Writer, h io.Writer, r *rand.ChaCha8, n int64) {
	t.Helper()
	if _, err := io.CopyN(io.MultiWriter(w, h), r, n); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// TestReloadDuringTransfer: a file rewrite (rename over the old file) and
// then SIGHUP (after an edit the watch cannot see) each change the decision
// for new connections, while a 50 MiB upload that started before both
// completes intact.
func TestReloadDuringTransfer(t *testing.T) {
	w := newOpWorld(t, "", allowA)
	wantDecision(t, w.listen, "a.test", true)
	wantDecision(t, w.listen, "b.test", false)

	c, err := dialName(t, w.listen, "a.test")
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	r := rand.NewChaCha8([32]byte{5})
	send(t, c, h, r, 20<<20)

	// 1. Editor-style rewrite: now b is allowed and a is not.
	writeReplace(t, w.path, w.config(allowB))
	w.p.waitFor(true, "config reloaded", "trigger=\"file changed\"")
	wantDecision(t, w.listen, "a.test", false)
	wantDecision(t, w.listen, "b.test", true)
	send(t, c, h, r, 15<<20)

	// 2. An in-place edit through a hard link in another directory: the
	// watch on the config's directory sees nothing, SIGHUP applies it.
	other := filepath.Join(t.TempDir(), "link.yaml")
	if err := os.Link(w.path, other); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, []byte(w.config(allowA+allowB)), 0o644); err != nil {
		t.Fatal(err)
	}
	w.p.signal(syscall.SIGHUP)
	w.p.waitFor(true, "config reloaded", "trigger=SIGHUP")
	wantDecision(t, w.listen, "a.test", true)
	wantDecision(t, w.listen, "b.test", true)
	send(t, c, h, r, 15<<20)

	// The upload from before both reloads completes, byte for byte.
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if want := hex.EncodeToString(h.Sum(nil)); err != nil || string(got) != want {
		t.Errorf("sink's sha256 of 50 MiB sent across two reloads = %q, %v; want %s", got, err, want)
	}
	if n := metricValue(t, w.adminAdr, `egressd_reloads_total{result="success"}`); n != 2 {
		t.Errorf("reloads{success} = %v, want 2", n)
	}
}

// TestBrokenReloadKeepsPolicy: a file with mistakes is refused as a whole,
// every problem is logged with its line, the failure is counted, and the
// running policy keeps deciding.
func TestBrokenReloadKeepsPolicy(t *testing.T) {
	w := newOpWorld(t, "", allowA)
	broken := strings.Replace(w.config(allowB), "[b.test]", "[b.test, \"bad..name\"]", 1)
	broken = strings.Replace(broken, "default: deny", "default: perhaps", 1)
	writeReplace(t, w.path, broken)
	w.p.waitFor(true, "reload failed", `egressd.yaml:7: policy.default: unknown action`)
	w.p.waitFor(true, "reload failed", `egressd.yaml:9: policy.rules[0].fqdn[1]`)
	if n := metricValue(t, w.adminAdr, `egressd_reloads_total{result="failure"}`); n != 1 {
		t.Errorf("reloads{failure} = %v, want 1", n)
	}
	wantDecision(t, w.listen, "a.test", true)
	wantDecision(t, w.listen, "b.test", false)
	// A listener change that cannot be bound fails the same way.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := strings.Replace(w.config(allowB), w.listen, taken.Addr().String(), 1)
	writeReplace(t, w.path, busy)
	w.p.waitFor(true, "reload failed", "address already in use")
	wantDecision(t, w.listen, "a.test", true)
	if n := metricValue(t, w.adminAdr, `egressd_reloads_total{result="failure"}`); n != 2 {
		t.Errorf("reloads{failure} = %v, want 2", n)
	}
}

// TestBrokenFileNotRetried: once a broken file has been refused, events
// for other files in its directory (a log file kept next to it) do not
// refuse, log and count it again; the next change to it is read.
func TestBrokenFileNotRetried(t *testing.T) {
	w := newOpWorld(t, "", allowA)
	broken := strings.Replace(w.config(allowB), "default: deny", "default: perhaps", 1)
	writeReplace(t, w.path, broken)
	w.p.waitFor(true, "reload failed", "policy.default: unknown action")
	other := filepath.Join(filepath.Dir(w.path), "access.log")
	for i := range 3 {
		if err := os.WriteFile(other, []byte(strings.Repeat("x", i+1)), 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(400 * time.Millisecond) // past the watch's 200 ms debounce
	}
	if n := metricValue(t, w.adminAdr, `egressd_reloads_total{result="failure"}`); n != 1 {
		t.Errorf("reloads{failure} = %v after events for another file, want 1", n)
	}
	writeReplace(t, w.path, w.config(allowB))
	w.p.waitFor(true, "config reloaded")
	wantDecision(t, w.listen, "b.test", true)
}

// TestDrain: SIGTERM turns /readyz to 503 and stops accepting, a live
// connection keeps relaying, and the process exits 0 once it ends.
func TestDrain(t *testing.T) {
	w := newOpWorld(t, "shutdown_grace: 1h", allowA)
	base := "http://" + w.adminAdr
	if code, body := httpGet(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz before drain = %d %q", code, body)
	}
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz = %d", code)
	}
	c, err := dialName(t, w.listen, "a.test")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	send(t, c, h, rand.NewChaCha8([32]byte{1}), 1<<20)
	w.p.signal(syscall.SIGTERM)
	w.p.waitFor(true, "draining")
	// Readiness flips as the gateway starts draining, a moment after the
	// signal is logged.
	deadline := time.Now().Add(5 * time.Second)
	code, body := httpGet(t, base+"/readyz")
	for code == 200 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		code, body = httpGet(t, base+"/readyz")
	}
	if code != 503 || body != "draining\n" {
		t.Errorf("/readyz while draining = %d %q, want 503 draining", code, body)
	}
	// The listener closes right after readiness flips.
	for {
		c, err := net.DialTimeout("tcp", w.listen, 5*time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Errorf("new connections still accepted while draining")
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	send(t, c, h, rand.NewChaCha8([32]byte{2}), 1<<20)
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if want := hex.EncodeToString(h.Sum(nil)); err != nil || string(got) != want {
		t.Errorf("live connection during drain: sink sha256 %q, %v; want %s", got, err, want)
	}
	c.Close()
	select {
	case <-w.p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("egressd still running after its last connection closed")
	}
	if w.p.code != 0 {
		t.Errorf("exit code %d, want 0", w.p.code)
	}
}

// TestSecondSignal: during a drain with an hour of grace, a second SIGTERM
// closes the live connection at once and egressd exits 0.
func TestSecondSignal(t *testing.T) {
	w := newOpWorld(t, "shutdown_grace: 1h", allowA)
	c, err := dialName(t, w.listen, "a.test")
	if err != nil {
		t.Fatal(err)
	}
	w.p.signal(syscall.SIGTERM)
	w.p.waitFor(true, "draining")
	w.p.signal(syscall.SIGTERM)
	select {
	case <-w.p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("egressd still running after the second signal")
	}
	if w.p.code != 0 {
		t.Errorf("exit code %d, want 0", w.p.code)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("live connection still open after egressd exited")
	}
}

// TestReopenLog: after logrotate's rename, SIGUSR1 makes egressd write to a
// new file by the configured name.
func TestReopenLog(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")
	w := newOpWorld(t, "log: {output: "+logPath+"}", allowA)
	wantDecision(t, w.listen, "a.test", true)
	waitFile(t, logPath, `"fqdn":"a.test"`)
	rotated := logPath + ".1"
	if err := os.Rename(logPath, rotated); err != nil {
		t.Fatal(err)
	}
	w.p.signal(syscall.SIGUSR1)
	w.p.waitFor(true, "access log reopened")
	wantDecision(t, w.listen, "b.test", false)
	waitFile(t, logPath, `"fqdn":"b.test"`)
	if b, _ := os.ReadFile(rotated); strings.Contains(string(b), "b.test") {
		t.Errorf("line after SIGUSR1 went to the rotated file")
	}
}

func waitFile(t *testing.T, path, sub string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), sub) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, err := os.ReadFile(path)
	t.Fatalf("%s has no line with %q: %v\n%s", path, sub, err, b)
}

// TestAcceptBacksOff runs egressd with 40 file descriptors and holds more
// connections than that open: accept fails with EMFILE, and egressd backs
// off, doubling the wait from 5 ms, instead of spinning; once the
// connections end it accepts again.
func TestAcceptBacksOff(t *testing.T) {
	w := &opWorld{
		path:     filepath.Join(t.TempDir(), "egressd.yaml"),
		listen:   fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		adminAdr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		sinkPort: startSink(t),
		dns:      startDNS(t, "a.test"),
		// No limits: derived from ulimit -n 40 they would refuse the
		// connections before accept runs out of descriptors.
		extra: "timeouts: {client_hello: 3s}\nlimits: {max_connections: 0, max_connections_per_source: 0, max_pending_handshakes: 0}",
	}
	writeReplace(t, w.path, w.config(allowA))
	// dash and bash both set the soft and the hard limit with ulimit -n.
	cmd := exec.Command("sh", "-c", `ulimit -n 40 && exec "$0" run --config "$1"`, os.Args[0], w.path)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	w.p = startEgressdCmd(t, cmd)
	w.p.waitFor(true, "open-files limit", "soft=40", "hard=40")

	// Each holds a descriptor in egressd until client_hello (3 s) ends it:
	// a started, never finished ClientHello.
	var held []net.Conn
	for range 60 {
		c, err := net.Dial("tcp", w.listen)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte{0x16, 0x03, 0x01})
		held = append(held, c)
	}
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for _, want := range []string{"backoff=5ms", "backoff=10ms", "backoff=20ms", "backoff=40ms"} {
		w.p.waitFor(true, "accept failed; backing off", "too many open files", want)
	}
	// The held connections time out; new ones are served again.
	for _, c := range held {
		c.Close()
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := dialName(t, w.listen, "a.test")
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after the descriptors were freed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := metricValue(t, w.adminAdr, "egressd_accept_errors_total"); n < 4 {
		t.Errorf("egressd_accept_errors_total = %v, want >= 4", n)
	}
}

// TestProxyProtocolSplices checks that a connection whose PROXY header
// egressd read is still relayed with splice(2): egressd runs under strace,
// and the bytes its splice calls moved must cover the upload.
func TestProxyProtocolSplices(t *testing.T) {
	if _, err := exec.LookPath("strace"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true and strace is not installed")
		}
		t.Skip("strace is not installed")
	}
	w := &opWorld{
		path:     filepath.Join(t.TempDir(), "egressd.yaml"),
		listen:   fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		adminAdr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		sinkPort: startSink(t),
		dns:      startDNS(t, "a.test"),
	}
	cfg := strings.Replace(w.config(allowA), "upstream_port:", "proxy_protocol: true, upstream_port:", 1)
	writeReplace(t, w.path, cfg)
	trace := filepath.Join(t.TempDir(), "strace.out")
	cmd := exec.Command("strace", "-f", "-qq", "-e", "trace=splice", "-o", trace, os.Args[0], "run", "--config", w.path)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	w.p = startEgressdCmd(t, cmd)

	raw, err := net.Dial("tcp", w.listen)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write([]byte("PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n"))
	c := tls.Client(raw, &tls.Config{ServerName: "a.test", InsecureSkipVerify: true})
	c.SetDeadline(time.Now().Add(60 * time.Second))
	const size = 8 << 20
	h := sha256.New()
	send(t, c, h, rand.NewChaCha8([32]byte{9}), size)
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if want := hex.EncodeToString(h.Sum(nil)); err != nil || string(got) != want {
		t.Fatalf("upload through the PROXY listener: sink sha256 %q, %v; want %s", got, err, want)
	}
	c.Close()
	w.p.waitFor(false, `"src":"192.0.2.7:40000"`)
	// Stop egressd itself (strace's child), so that strace writes its
	// trace and exits with it.
	pid := w.p.cmd.Process.Pid
	kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var child int
	if _, serr := fmt.Sscan(string(kids), &child); err != nil || serr != nil {
		t.Fatalf("egressd's pid under strace: %q, %v, %v", kids, err, serr)
	}
	syscall.Kill(child, syscall.SIGTERM)
	select {
	case <-w.p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("egressd under strace did not exit after SIGTERM")
	}

	out, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	var spliced int64
	for _, l := range strings.Split(string(out), "\n") {
		if i := strings.LastIndex(l, ") = "); i >= 0 && strings.Contains(l, "splice(") {
			var n int64
			fmt.Sscan(l[i+4:], &n)
			if n > 0 {
				spliced += n
			}
		}
	}
	// Each byte is spliced twice (socket to pipe, pipe to socket). Copying
	// would splice nothing; allow 5% for bytes written by hand (the peeked
	// ClientHello).
	if want := int64(2 * size * 95 / 100); spliced < want {
		t.Errorf("splice(2) moved %d bytes for an upload of %d; want at least %d (the relay fell back to copying)", spliced, size, want)
	}
}

// TestConfigMapSwap lays the config out as the kubelet mounts a ConfigMap
// (egressd.yaml -> ..data/egressd.yaml, ..data -> ..VERSION) and updates
// it the kubelet's way, by renaming a new ..data symlink over the old one;
// egressd must reload.
func TestConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	w := opWorldAt(t, filepath.Join(dir, "egressd.yaml"))
	version := func(name, rules string) { publish(t, dir, name, "..data", w.config(rules)) }
	version("..2026_11_26_00_00_00.1", allowA)
	if err := os.Symlink("..data/egressd.yaml", w.path); err != nil {
		t.Fatal(err)
	}
	w.p = startEgressdProc(t, w.path)
	wantDecision(t, w.listen, "b.test", false)

	version("..2026_11_26_00_01_00.2", allowB)
	os.RemoveAll(filepath.Join(dir, "..2026_11_26_00_00_00.1")) // as the kubelet does
	w.p.waitFor(true, "config reloaded", "trigger=\"file changed\"")
	wantDecision(t, w.listen, "b.test", true)
	wantDecision(t, w.listen, "a.test", false)
}

// TestReloadBesideBusyFile: a file written more often than the watch's
// debounce, in the config's directory (an access log kept next to the
// config), does not put a reload off: each write used to restart the
// debounce, and the file's change was never read while the writes went on.
func TestReloadBesideBusyFile(t *testing.T) {
	w := newOpWorld(t, "", allowA)
	wantDecision(t, w.listen, "b.test", false)
	busy, err := os.OpenFile(filepath.Join(filepath.Dir(w.path), "access.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond) // 10 writes per debounce
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				busy.WriteString("{\"msg\":\"a line\"}\n")
			}
		}
	}()
	defer func() { close(stop); <-done }()
	time.Sleep(300 * time.Millisecond) // the writes have begun
	writeReplace(t, w.path, w.config(allowB))
	w.p.waitFor(true, "config reloaded", "trigger=\"file changed\"")
	wantDecision(t, w.listen, "b.test", true)
}

// TestReloadThroughLinkedDir: the config path goes through a directory
// link ("current" -> a release), and the link is swapped to the next
// release as deploy tools do (a new link renamed over it). The watch sees
// the swap, though nothing changed in the directory it first watched, and
// then follows the new release.
func TestReloadThroughLinkedDir(t *testing.T) {
	dir := t.TempDir()
	w := opWorldAt(t, filepath.Join(dir, "current", "egressd.yaml"))
	release := func(name, rules string) { publish(t, dir, name, "current", w.config(rules)) }
	release("r1", allowA)
	w.p = startEgressdProc(t, w.path)
	wantDecision(t, w.listen, "b.test", false)

	release("r2", allowB)
	w.p.waitFor(true, "config reloaded", "trigger=\"file changed\"", "rules=1")
	wantDecision(t, w.listen, "b.test", true)
	wantDecision(t, w.listen, "a.test", false)

	// Now r2's file is watched: an edit in place there is seen too.
	writeReplace(t, filepath.Join(dir, "r2", "egressd.yaml"), w.config(allowA+allowB))
	w.p.waitFor(true, "config reloaded", "trigger=\"file changed\"", "rules=2")
	wantDecision(t, w.listen, "a.test", true)
}

// TestReloadWaitsForWriter: a config rewritten in place by a writer that
// pauses longer than the debounce between its writes (a script appending
// rule by rule, a slow copy), while another file in the directory changes,
// is read once the writer closes it, never half-written: the first half
// here is a valid config with one rule of two, which would be applied.
func TestReloadWaitsForWriter(t *testing.T) {
	w := newOpWorld(t, "", allowB)
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(w.config(allowA)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(w.path), "other"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	finishSlowWrite(t, w, f)
	wantDecision(t, w.listen, "a.test", true)
	wantDecision(t, w.listen, "b.test", true)
}

// TestLogPipeGone: egressd's access log goes to stdout, a pipe whose
// reader is gone (a log shipper that exited). Go's default for a write to
// such a pipe on stdout is to end the process, and every connection with
// it; egressd goes on deciding and relaying, counts the lost lines and
// says so on stderr.
func TestLogPipeGone(t *testing.T) {
	w := opWorldAt(t, filepath.Join(t.TempDir(), "egressd.yaml"))
	writeReplace(t, w.path, w.config(allowA))
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close() // no reader: every write fails with EPIPE
	cmd := exec.Command(os.Args[0], "run", "--config", w.path)
	cmd.Stdout = pw
	w.p = startEgressdCmd(t, cmd)
	pw.Close()
	for range 3 {
		wantDecision(t, w.listen, "b.test", false)
		wantDecision(t, w.listen, "a.test", true)
	}
	w.p.waitFor(true, "access log write failed", "broken pipe")
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, w.adminAdr, "egressd_access_log_lost_total") < 6 {
		if time.Now().After(deadline) {
			t.Fatalf("egressd_access_log_lost_total = %v, want 6 (3 denied and 3 relayed lines)",
				metricValue(t, w.adminAdr, "egressd_access_log_lost_total"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-w.p.done:
		t.Fatalf("egressd exited (%d)", w.p.code)
	default:
	}
}

// TestReloadWaitsForNewFile: a config removed and written anew in place by
// a slow writer (rm, then a copy that pauses) is read once closed, never
// half-written: the new file's writes are heard on a watch made when it
// is created.
func TestReloadWaitsForNewFile(t *testing.T) {
	w := newOpWorld(t, "", allowB)
	if err := os.Remove(w.path); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(w.config(allowA)); err != nil {
		t.Fatal(err)
	}
	finishSlowWrite(t, w, f)
}

// finishSlowWrite ends a config write that began with allowA's config in
// f: a pause longer than the debounce, then the rule that makes it
// allowB's too, and the close. The reload must read the whole file, never
// the half with one rule.
func finishSlowWrite(t *testing.T, w *opWorld, f *os.File) {
	t.Helper()
	time.Sleep(3 * debounce)
	if _, err := f.WriteString(allowB); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	w.p.waitFor(true, "config reloaded", "trigger=\"file changed\"", "rules=2")
	for _, l := range w.p.lines(true) {
		if strings.Contains(l, "config reloaded") && strings.Contains(l, "rules=1") {
			t.Errorf("the half-written file was applied: %s", l)
		}
	}
}
