package e2e

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var long = flag.Bool("long", false, "run the long load test (50,000 connections in the burst)")

// loadConfig runs egressd alone in a namespace with its own loopback: an
// sni listener in front of one upstream port.
const loadConfig = `listeners:
  - {name: sni, mode: sni, address: "127.0.0.1:8443", upstream_port: 9443}
resolver: 127.0.0.1:5353
timeouts: {first_bytes: 300ms, client_hello: 5s, connect: 5s, idle: 15m}
log: {format: json}
# No limits: the test measures what each connection costs up to the fd
# limit (left out, the limits would be derived from it and refuse first).
limits: {max_connections: 0, max_connections_per_source: 0, max_pending_handshakes: 0}
policy:
  default: deny
  rules:
    - {name: load, action: allow, fqdn: ["load.test"], destinations: ["127.0.0.0/8"]}
`

// TestLoad holds 10,000 proxied connections open at once, reports what
// each costs egressd (RSS and fds), then opens a burst of new connections
// (20,000; 50,000 with -long). Nothing may fail: no limit is configured.
func TestLoad(t *testing.T) {
	requirePrivileges(t)
	// egressd needs two fds per proxied connection; this machine's hard
	// limit is 20,000 and raising it needs CAP_SYS_RESOURCE, so 9,900 is
	// as close to 10,000 as fits when the limit cannot be raised.
	concurrent := 10_000
	burst := 20_000
	if *long {
		burst = 50_000
	}
	if !raiseNoFile(t, 2*uint64(concurrent)+500) {
		concurrent = 9_900
	}

	ns := newNetns(t, "load", "lo")
	ns.setSysctl(t, "net.ipv4.ip_local_port_range", "1024 65535")
	ns.setSysctl(t, "net.core.somaxconn", "8192")
	startDNS(t, ns, "127.0.0.1:5353", map[string][]string{"load.test.": {"127.0.0.1"}})
	startHolder(t, ns, "127.0.0.1:9443")

	cfg := filepath.Join(t.TempDir(), "egressd.yaml")
	if err := os.WriteFile(cfg, []byte(loadConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	var logged, allowed atomic.Int64
	onLine := func(line string) {
		logged.Add(1)
		if strings.Contains(line, `"action":"allow"`) && !strings.Contains(line, "upstream failed") {
			allowed.Add(1)
		}
	}
	p := startProcess(t, "egressd", ns.command(context.Background(), egressdBinary(t), "run", "--config", cfg), onLine, nil)
	ns.waitListening(t, "127.0.0.1:8443", p)
	pid := p.cmd.Process.Pid
	hello := clientHello(t, &tls.Config{ServerName: "load.test"})

	rss0, fd0 := procRSS(t, pid), procFDs(t, pid)
	conns := make([]*net.TCPConn, concurrent)
	var failed atomic.Int64
	parallel(256, concurrent, func(i int) {
		c, err := open(ns, hello)
		if err != nil {
			if failed.Add(1) <= 5 {
				t.Errorf("connection %d: %v", i, err)
			}
			return
		}
		conns[i] = c
	})
	time.Sleep(time.Second) // let egressd's goroutines park
	rss1, fd1 := procRSS(t, pid), procFDs(t, pid)
	perConn := float64(rss1-rss0) / float64(concurrent) / 1024
	t.Logf("%d concurrent proxied connections: egressd RSS %.1f -> %.1f MiB (%.1f KiB per connection), fds %d -> %d (%.2f per connection); %d failed",
		concurrent, float64(rss0)/(1<<20), float64(rss1)/(1<<20), perConn, fd0, fd1, float64(fd1-fd0)/float64(concurrent), failed.Load())
	if extra := fd1 - fd0 - 2*concurrent; extra > 256 {
		t.Errorf("egressd holds %d fds beyond two per idle connection: pipes held while idle?", extra)
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	waitCount(t, &logged, int64(concurrent), "log lines for the held connections")

	// The burst: connect, hello, first bytes back, close, as fast as 256
	// clients can.
	before := allowed.Load()
	start := time.Now()
	parallel(256, burst, func(i int) {
		c, err := open(ns, hello)
		if err != nil {
			if failed.Add(1) <= 5 {
				t.Errorf("burst connection %d: %v", i, err)
			}
			return
		}
		c.Close()
	})
	elapsed := time.Since(start)
	waitCount(t, &allowed, before+int64(burst)-failed.Load(), "allowed log lines for the burst")
	t.Logf("burst of %d new connections in %v (%.0f conn/s, 256 clients); %d failed in all",
		burst, elapsed.Round(time.Millisecond), float64(burst)/elapsed.Seconds(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d connections failed with no limit configured", failed.Load())
	}
}

// open connects from ns, sends hello and waits for the upstream's "ok".
func open(ns *netns, hello []byte) (*net.TCPConn, error) {
	c, err := ns.dial("", "127.0.0.1:8443")
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(hello); err != nil {
		c.Close()
		return nil, err
	}
	var ok [3]byte
	if _, err := io.ReadFull(c, ok[:]); err != nil || string(ok[:]) != "ok\n" {
		c.Close()
		return nil, fmt.Errorf("no greeting through egressd: %q %v", ok, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// holderEnv, when set to an address, makes the test binary run as
// TestLoad's upstream instead of running tests: a process of its own, so
// that its sockets do not count against the test's fd limit.
const holderEnv = "EGRESSD_E2E_HOLDER"

// startHolder runs the upstream in ns: it reads a TLS record, answers
// "ok\n" and holds the connection until the client closes.
func startHolder(t *testing.T, ns *netns, addr string) {
	cmd := ns.command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), holderEnv+"="+addr)
	p := startProcess(t, "holder", cmd, nil, nil)
	ns.waitListening(t, addr, p)
}

func runHolder(addr string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "holder:", err)
		return 1
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "holder:", err)
			return 1
		}
		go func() {
			defer c.Close()
			var hdr [5]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			if _, err := io.CopyN(io.Discard, c, int64(hdr[3])<<8|int64(hdr[4])); err != nil {
				return
			}
			c.Write([]byte("ok\n"))
			io.Copy(io.Discard, c)
		}()
	}
}

// parallel runs fn(0..n-1) on workers goroutines.
func parallel(workers, n int, fn func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				fn(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

func waitCount(t *testing.T, v *atomic.Int64, want int64, what string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for v.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d, want %d", what, v.Load(), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// raiseNoFile lifts this process's fd limit (and so egressd's, which
// inherits it) to at least n, or to the hard limit when raising that is
// not permitted; it reports whether n was reached.
func raiseNoFile(t *testing.T, n uint64) bool {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return true
	}
	old := lim
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	lim.Cur, lim.Max = n, max(lim.Max, n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		return true
	}
	lim.Cur, lim.Max = old.Max, old.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("raise RLIMIT_NOFILE to its hard limit %d: %v", old.Max, err)
	}
	t.Logf("RLIMIT_NOFILE hard limit is %d and cannot be raised (no CAP_SYS_RESOURCE)", old.Max)
	return lim.Cur >= n
}

func procRSS(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func procFDs(t *testing.T, pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
