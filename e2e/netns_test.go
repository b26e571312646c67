package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// nsPrefix starts the name of every namespace these tests create:
// nsPrefix + PID + "-" + run + "-" + role. The PID lets a later run tell a
// stale namespace (its process is gone) from one of a concurrent run.
const nsPrefix = "egde2e-"

// netns is one named network namespace (ip netns add).
type netns struct {
	name string
	// ownPorts: dial gives every connection a local port of its own (see
	// dial). Set for the client namespace of a topology, whose
	// connections are redirected.
	ownPorts bool
}

// ip runs `ip -n NS ARGS...` and fails the test on error.
func (n *netns) ip(t testing.TB, args ...string) {
	t.Helper()
	runCmd(t, "ip", append([]string{"-n", n.name}, args...)...)
}

// exec runs a program inside the namespace and fails the test on error.
func (n *netns) exec(t testing.TB, name string, args ...string) {
	t.Helper()
	runCmd(t, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// command prepares a program to run inside the namespace.
func (n *netns) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// do runs fn on an OS thread that has entered the namespace. Sockets that fn
// creates stay in the namespace for their whole life, whatever thread uses
// them later. If the thread cannot return to its own namespace it is left
// locked, so the runtime discards it with the goroutine.
func (n *netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(self)
		target, err := unix.Open(filepath.Join("/run/netns", n.name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", n.name, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", n.name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leave netns %s: %w", n.name, err) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// listen opens a TCP listener inside the namespace, closed at cleanup.
func (n *netns) listen(t testing.TB, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := n.do(func() (err error) {
		ln, err = net.Listen(tcpNetwork(addr), addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, n.name, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// dial connects from inside the namespace, from laddr if it is not empty.
func (n *netns) dial(laddr, raddr string) (*net.TCPConn, error) {
	if !n.ownPorts {
		return n.dialFrom(laddr, raddr)
	}
	host := ""
	if laddr != "" {
		h, port, err := net.SplitHostPort(laddr)
		if err != nil {
			return nil, err
		}
		if port != "0" {
			return n.dialFrom(laddr, raddr)
		}
		host = h
	}
	// A port of its own for every connection of the run. With the kernel
	// choosing, a client reuses a port towards another destination, but
	// REDIRECT sends both to the same listener: when the earlier
	// connection's conntrack entry is still there, NAT rewrites the new
	// one's source port, and egressd logs a src the client never had
	// (a server-first test once failed on 10.99.1.2:4563 that way).
	for range 64 {
		p := nextClientPort.Add(1)%(clientPortEnd-clientPortStart) + clientPortStart
		c, err := n.dialFrom(net.JoinHostPort(host, strconv.Itoa(int(p))), raddr)
		if !errors.Is(err, unix.EADDRINUSE) {
			return c, err
		}
	}
	return nil, fmt.Errorf("dial %s: no free client port", raddr)
}

// Client ports come from below the kernel's ephemeral range (32768 up), so
// no kernel-chosen port of the namespaces' own servers can take one.
const clientPortStart, clientPortEnd = 20000, 32000

var nextClientPort atomic.Int32

func (n *netns) dialFrom(laddr, raddr string) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if laddr != "" {
		a, err := net.ResolveTCPAddr(tcpNetwork(raddr), laddr)
		if err != nil {
			return nil, err
		}
		d.LocalAddr = a
	}
	var c net.Conn
	err := n.do(func() (err error) {
		c, err = d.Dial(tcpNetwork(raddr), raddr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// tcpNetwork is "tcp6" for an address whose host is an IPv6 literal
// ("[2001:db8::1]:443"), "tcp4" for anything else.
func tcpNetwork(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		return "tcp6"
	}
	return "tcp4"
}

// waitListening polls until something accepts TCP connections on addr, seen
// from inside the namespace.
func (n *netns) waitListening(t testing.TB, addr string, p *process) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := n.dial("", addr)
		if err == nil {
			c.Close()
			return
		}
		if p != nil && p.exited() {
			t.Fatalf("%s exited before listening on %s:\n%s", p.name, addr, p.output())
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s in %s: %v", addr, n.name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// setSysctl writes a value under /proc/sys from inside the namespace.
func (n *netns) setSysctl(t testing.TB, key, value string) {
	t.Helper()
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	if err := n.do(func() error { return os.WriteFile(path, []byte(value), 0o644) }); err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, value, n.name, err)
	}
}

// remove kills whatever still runs in the namespace (only processes these
// tests started live there) and deletes it.
func (n *netns) remove() error {
	out, _ := exec.Command("ip", "netns", "pids", n.name).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
	if b, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", n.name, err, b)
	}
	return nil
}

// newNetns creates a namespace with its loopback up, deleted at cleanup.
func newNetns(t testing.TB, run, role string) *netns {
	t.Helper()
	n := &netns{name: fmt.Sprintf("%s%d-%s-%s", nsPrefix, os.Getpid(), run, role)}
	runCmd(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() {
		if err := n.remove(); err != nil {
			t.Error(err)
		}
	})
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// removeStaleNamespaces deletes namespaces left by earlier runs whose
// process is gone (a run killed before its cleanup).
func removeStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || !strings.HasPrefix(fields[0], nsPrefix) {
			continue
		}
		name := fields[0]
		pidText, _, _ := strings.Cut(strings.TrimPrefix(name, nsPrefix), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // a concurrent run
		}
		(&netns{name: name}).remove()
	}
}

// topology is the three namespaces of the tests' network:
//
//	cli 10.99.1.2, 10.99.1.3 ── 10.99.1.1 gw 198.51.100.1, 10.99.2.1 ── srv 198.51.100.10, .20, 10.99.2.10
//	    fd00:99:1::2          ── fd00:99:1::1 gw 2001:db8:100::1       ── srv 2001:db8:100::10
//
// cli's default route is gw, and so is srv's, in both families; gw forwards
// both.
type topology struct {
	cli, gw, srv *netns
}

// Addresses of the topology.
const (
	cliAddr      = "10.99.1.2"
	cliTrustAddr = "10.99.1.3" // a second client address, redirected to the trust listener
	gwCliAddr    = "10.99.1.1"
	srvAddr      = "198.51.100.10"
	attackerAddr = "198.51.100.20" // a public address that allowed.test does not resolve to
	labAddr      = "10.99.2.10"    // a restricted address only lab-ssh opens
	silentAddr   = "198.51.100.30" // a public address that drops every packet
	gwCliIf      = "to-cli"        // gw's interface towards cli

	// IPv6. fd00::/8 (cli's side) is restricted in egressd's policy;
	// 2001:db8::/32 (documentation) is not, so srv lives there.
	cliAddr6   = "fd00:99:1::2"
	gwCliAddr6 = "fd00:99:1::1"
	gwSrvAddr6 = "2001:db8:100::1"
	srvAddr6   = "2001:db8:100::10"
)

func newTopology(t testing.TB) *topology {
	t.Helper()
	requirePrivileges(t)
	b := make([]byte, 2)
	rand.Read(b)
	run := hex.EncodeToString(b)
	top := &topology{cli: newNetns(t, run, "cli"), gw: newNetns(t, run, "gw"), srv: newNetns(t, run, "srv")}
	top.cli.ownPorts = true

	// The veths are made inside the namespaces: their names never meet
	// those of a concurrent run in the root namespace.
	top.cli.ip(t, "link", "add", "eth0", "type", "veth", "peer", "name", gwCliIf, "netns", top.gw.name)
	top.gw.ip(t, "link", "add", "to-srv", "type", "veth", "peer", "name", "eth0", "netns", top.srv.name)

	top.cli.ip(t, "addr", "add", cliAddr+"/24", "dev", "eth0")
	top.cli.ip(t, "addr", "add", cliTrustAddr+"/24", "dev", "eth0")
	top.gw.ip(t, "addr", "add", gwCliAddr+"/24", "dev", gwCliIf)
	top.gw.ip(t, "addr", "add", "198.51.100.1/24", "dev", "to-srv")
	top.gw.ip(t, "addr", "add", "10.99.2.1/24", "dev", "to-srv")
	for _, a := range []string{srvAddr, attackerAddr, labAddr} {
		top.srv.ip(t, "addr", "add", a+"/24", "dev", "eth0")
	}
	top.cli.ip(t, "link", "set", "eth0", "up")
	top.gw.ip(t, "link", "set", gwCliIf, "up")
	top.gw.ip(t, "link", "set", "to-srv", "up")
	top.srv.ip(t, "link", "set", "eth0", "up")
	top.cli.ip(t, "route", "add", "default", "via", gwCliAddr)
	top.srv.ip(t, "route", "add", "default", "via", "198.51.100.1")
	top.gw.setSysctl(t, "net.ipv4.ip_forward", "1")

	// nodad: the addresses are usable at once, not tentative for a second.
	top.cli.ip(t, "-6", "addr", "add", cliAddr6+"/64", "dev", "eth0", "nodad")
	top.gw.ip(t, "-6", "addr", "add", gwCliAddr6+"/64", "dev", gwCliIf, "nodad")
	top.gw.ip(t, "-6", "addr", "add", gwSrvAddr6+"/64", "dev", "to-srv", "nodad")
	top.srv.ip(t, "-6", "addr", "add", srvAddr6+"/64", "dev", "eth0", "nodad")
	top.cli.ip(t, "-6", "route", "add", "default", "via", gwCliAddr6)
	top.srv.ip(t, "-6", "route", "add", "default", "via", gwSrvAddr6)
	top.gw.setSysctl(t, "net.ipv6.conf.all.forwarding", "1")
	return top
}

// redirect sends every TCP connection arriving from cli to egressd's
// transparent listeners with iptables REDIRECT: from cliTrustAddr to the
// trust listener, from anyone else to the verify one.
func (top *topology) redirect(t testing.TB) {
	t.Helper()
	requireTools(t, "iptables")
	top.gw.exec(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-i", gwCliIf, "-p", "tcp", "-s", cliTrustAddr,
		"-j", "REDIRECT", "--to-ports", portTrust)
	top.gw.exec(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-i", gwCliIf, "-p", "tcp",
		"-j", "REDIRECT", "--to-ports", portTransparent)
}

// redirect6 is redirect for IPv6: every TCP connection arriving from cli
// over IPv6 goes to the transparent6 listener (ip6tables REDIRECT, so egressd
// reads the original destination with IP6T_SO_ORIGINAL_DST).
func (top *topology) redirect6(t testing.TB) {
	t.Helper()
	requireTools(t, "ip6tables")
	top.gw.exec(t, "ip6tables", "-t", "nat", "-A", "PREROUTING", "-i", gwCliIf, "-p", "tcp",
		"-j", "REDIRECT", "--to-ports", portTransparent6)
}

// tproxy sends every TCP connection arriving from cli to egressd's TPROXY
// listener: iptables TPROXY marks the packets, policy routing delivers them
// locally.
func (top *topology) tproxy(t testing.TB) {
	t.Helper()
	requireTools(t, "iptables")
	top.gw.exec(t, "iptables", "-t", "mangle", "-A", "PREROUTING", "-i", gwCliIf, "-p", "tcp",
		"-j", "TPROXY", "--on-port", portTProxy, "--on-ip", "0.0.0.0", "--tproxy-mark", "0x1/0x1")
	top.gw.ip(t, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100")
	top.gw.ip(t, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
}

// nftRedirect is redirect written for nftables.
func (top *topology) nftRedirect(t testing.TB) {
	t.Helper()
	top.gw.nft(t, `table ip egressd_e2e {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "`+gwCliIf+`" ip saddr `+cliTrustAddr+` meta l4proto tcp redirect to :`+portTrust+`
		iifname "`+gwCliIf+`" meta l4proto tcp redirect to :`+portTransparent+`
	}
}`)
}

// nftTProxy is tproxy written for nftables.
func (top *topology) nftTProxy(t testing.TB) {
	t.Helper()
	top.gw.nft(t, `table ip egressd_e2e {
	chain prerouting {
		type filter hook prerouting priority mangle; policy accept;
		iifname "`+gwCliIf+`" meta l4proto tcp tproxy to :`+portTProxy+` meta mark set 0x1 accept
	}
}`)
	top.gw.ip(t, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100")
	top.gw.ip(t, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
}

// nft loads an nftables ruleset into the namespace.
func (n *netns) nft(t testing.TB, ruleset string) {
	t.Helper()
	requireTools(t, "nft")
	file := filepath.Join(t.TempDir(), "ruleset.nft")
	if err := os.WriteFile(file, []byte(ruleset), 0o644); err != nil {
		t.Fatal(err)
	}
	n.exec(t, "nft", "-f", file)
}

// countUpstreamSYNs makes gw count the SYNs it sends towards srv, those
// with egressd's mark (0x100) and those without; see upstreamSYNs.
func (top *topology) countUpstreamSYNs(t testing.TB) {
	t.Helper()
	top.gw.countMarked(t, "-o", "to-srv", "-p", "tcp", "--syn")
}

// upstreamSYNs reads the counters of countUpstreamSYNs.
func (top *topology) upstreamSYNs(t testing.TB) (marked, unmarked int) {
	t.Helper()
	return top.gw.markedCounts(t)
}

// countMarked makes n count the packets it sends that match match (iptables
// arguments), those with egressd's mark (0x100) and those without; see
// markedCounts. One such pair per namespace.
func (n *netns) countMarked(t testing.TB, match ...string) {
	t.Helper()
	requireTools(t, "iptables")
	for _, not := range [][]string{nil, {"!"}} {
		args := append([]string{"-t", "mangle", "-A", "OUTPUT"}, match...)
		args = append(append(append(args, "-m", "mark"), not...), "--mark", "0x100")
		n.exec(t, "iptables", args...)
	}
}

// markedCounts reads the counters of countMarked.
func (n *netns) markedCounts(t testing.TB) (marked, unmarked int) {
	t.Helper()
	out, err := n.command(context.Background(), "iptables", "-t", "mangle", "-L", "OUTPUT", "-v", "-x", "-n").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables -L: %v\n%s", err, out)
	}
	found := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.Contains(line, "mark match") {
			continue
		}
		c, err := strconv.Atoi(f[0])
		if err != nil {
			t.Fatalf("iptables -L: cannot read %q", line)
		}
		found++
		if strings.Contains(line, "mark match !") {
			unmarked = c
		} else {
			marked = c
		}
	}
	if found != 2 {
		t.Fatalf("iptables -L: want 2 counter rules, found %d:\n%s", found, out)
	}
	return marked, unmarked
}

// runCmd runs a program and fails the test on error.
func runCmd(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
