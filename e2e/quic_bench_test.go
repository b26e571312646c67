package e2e

import (
	"context"
	"fmt"
	"github.com/egressd/egressd/internal/testnet"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	iquic "github.com/egressd/egressd/internal/quic"
	"github.com/egressd/egressd/internal/quicproxy/quictest"
)

// TestQUICBench measures the UDP side's relay against no proxy at all
// ("direct": gw only routes): an HTTP/3 download with quic-go at both ends,
// and a raw UDP stream of 1200-byte datagrams on one decided flow (its
// first datagrams a ClientHello naming allowed.test, then short-header
// packets) into a counting sink. It reports throughput and egressd's CPU
// per GB relayed (utime+stime of its process). Everything shares the
// machine's cores, so the numbers are for comparing the two paths, not
// absolute. Run it with EGRESSD_BENCH=1:
//
//	EGRESSD_BENCH=1 go test -count=1 -timeout 300s ./e2e/ -run TestQUICBench -v
func TestQUICBench(t *testing.T) {
	if os.Getenv("EGRESSD_BENCH") == "" {
		t.Skip("a benchmark: set EGRESSD_BENCH=1")
	}
	w := newQUICWorld(t, quicIPTables)
	// cliTrustAddr is not intercepted: the direct path.
	w.gw.exec(t, "iptables", "-t", "mangle", "-I", "PREROUTING", "1", "-i", gwCliIf, "-s", cliTrustAddr, "-j", "RETURN")
	w.gw.exec(t, "iptables", "-t", "mangle", "-A", "PREROUTING", "-i", gwCliIf, "-p", "udp", "--dport", "8443",
		"-j", "TPROXY", "--on-port", portQUIC, "--on-ip", "0.0.0.0", "--tproxy-mark", "0x1/0x1")
	pid := w.log.proc.cmd.Process.Pid
	sink := startUDPSink(t, w.srv, srvAddr+":8443")

	const h3Size, rawSize = 256 << 20, 1 << 30
	var rows []string
	for _, path := range []struct {
		name, src string
	}{{"direct", cliTrustAddr}, {"egressd", cliAddr}} {
		cpu0 := procCPU(t, pid)
		start := time.Now()
		n := h3Download(t, w, path.src, h3Size)
		elapsed := time.Since(start)
		cpu := procCPU(t, pid) - cpu0
		rows = append(rows, benchRow(path.name, "HTTP/3 download (quic-go)", n, elapsed, cpu, path.name == "egressd"))

		cpu0 = procCPU(t, pid)
		got, elapsed := rawBlast(t, w, sink, path.src, rawSize)
		cpu = procCPU(t, pid) - cpu0
		rows = append(rows, benchRow(path.name, "raw UDP, 1200-byte datagrams, one flow", got, elapsed, cpu, path.name == "egressd"))
	}
	t.Logf("\n| path | workload | MB/s | egressd CPU ms per GB |\n|---|---|---|---|\n%s", strings.Join(rows, "\n"))
}

func benchRow(path, workload string, bytes int64, elapsed, cpu time.Duration, proxied bool) string {
	perGB := "-"
	if proxied && bytes > 0 {
		perGB = strconv.FormatFloat(float64(cpu.Milliseconds())/(float64(bytes)/1e9), 'f', 0, 64)
	}
	return fmt.Sprintf("| %s | %s | %.0f | %s |", path, workload, float64(bytes)/1e6/elapsed.Seconds(), perGB)
}

// h3Download GETs size bytes over HTTP/3 from srv, from src in cli, and
// returns how many came.
func h3Download(t *testing.T, w *quicWorld, src string, size int64) int64 {
	t.Helper()
	var pc *net.UDPConn
	if err := w.cli.do(func() (err error) {
		pc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(src+":0")))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	client, done := w.h3ClientConn(t, pc, map[string]string{"allowed.test": srvAddr})
	defer done()
	resp, err := client.Get("https://allowed.test/stream?n=" + strconv.FormatInt(size, 10))
	if err != nil {
		t.Fatalf("GET from %s: %v", src, err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != size {
		t.Fatalf("GET from %s: %d bytes, %v", src, n, err)
	}
	return n
}

func startUDPSink(t *testing.T, ns *netns, addr string) *testnet.UDPSink {
	t.Helper()
	var pc *net.UDPConn
	if err := ns.do(func() (err error) {
		pc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return testnet.Sink(pc)
}

// rawBlast sends a ClientHello naming allowed.test and then size bytes of
// 1200-byte short-header datagrams, 32 a sendmmsg, from src to the sink,
// and returns what the sink got and the time from the first to the last.
func rawBlast(t *testing.T, w *quicWorld, sink *testnet.UDPSink, src string, size int64) (int64, time.Duration) {
	t.Helper()
	var pc *net.UDPConn
	if err := w.cli.do(func() (err error) {
		pc, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(src+":0")),
			net.UDPAddrFromAddrPort(netip.MustParseAddrPort(srvAddr+":8443")))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetWriteBuffer(4 << 20)
	hello, err := quictest.Hello("allowed.test", []byte("cscid"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := quictest.NewClient(iquic.Version1, []byte("bench-flow-00001"), []byte("cscid"))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := c.Initials(hello, 2, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		pc.Write(d)
	}
	time.Sleep(100 * time.Millisecond) // decided
	before := sink.Bytes.Load()
	payload := make([]byte, 1200)
	payload[0] = 0x40
	ms := make([]ipv4.Message, 32)
	for i := range ms {
		ms[i].Buffers = [][]byte{payload}
	}
	p := ipv4.NewPacketConn(pc)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for sent := int64(0); sent < size && ctx.Err() == nil; {
		n, err := p.WriteBatch(ms, 0)
		if err != nil {
			continue // ENOBUFS: the queue is full
		}
		sent += int64(n) * int64(len(payload))
	}
	// The sink is done when nothing has come for 300 ms.
	for time.Since(time.Unix(0, sink.Last.Load())) < 300*time.Millisecond {
		time.Sleep(50 * time.Millisecond)
	}
	return sink.Bytes.Load() - before, time.Unix(0, sink.Last.Load()).Sub(start)
}

// procCPU is the user and system CPU time of process pid so far.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 14th and 15th fields of the line, in clock ticks.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ 100
}
