package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestDerivedLimits: with no limits section and ulimit -n 40, egressd
// derives its limits from the open-files limit, prints them at start, and
// a crowd of stalled handshakes is refused by max_pending_handshakes
// instead of running egressd out of descriptors (without limits, accept
// fails with EMFILE: TestAcceptBacksOff).
func TestDerivedLimits(t *testing.T) {
	w := &opWorld{
		path:     filepath.Join(t.TempDir(), "egressd.yaml"),
		listen:   fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		adminAdr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		sinkPort: startSink(t),
		dns:      startDNS(t, "a.test"),
		extra:    "timeouts: {client_hello: 3s}",
	}
	writeReplace(t, w.path, w.config(allowA))
	cmd := exec.Command("sh", "-c", `ulimit -n 40 && exec "$0" run --config "$1"`, os.Args[0], w.path)
	w.p = startEgressdCmd(t, cmd)
	// 40 files, a reserve of 20: 10 connections, three quarters of them
	// per source, a quarter pending.
	w.p.waitFor(true, "msg=limits", "max_connections=10 max_connections_per_source=7 max_pending_handshakes=2",
		"open-files limit 40")

	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 60 {
		c, err := net.Dial("tcp", w.listen)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte{0x16, 0x03, 0x01}) // a ClientHello never finished
		held = append(held, c)
	}
	w.p.waitFor(true, "limit reached", "max_pending_handshakes")
	if n := metricValue(t, w.adminAdr, "egressd_accept_errors_total"); n != 0 {
		t.Errorf("egressd_accept_errors_total = %v, want 0: the limits should refuse before descriptors run out", n)
	}
}
