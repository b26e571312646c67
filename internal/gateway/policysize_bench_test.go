package gateway

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// benchNoMatch is the name every connection of BenchmarkPolicySize asks
// for: deep, so that a wildcard search walks every label, and matched by no
// pattern, so that the whole policy is consulted before the default deny.
const benchNoMatch = "a.b.c.d.nothing.example.org"

// BenchmarkPolicySize shows how the cost of a whole connection grows with
// the policy: the same connection as BenchmarkConnection, on a
// real loopback socket, but an HTTP request whose Host names benchNoMatch,
// against gateways compiled from 10, 1,000 and 100,000 fqdn patterns.
// Each connection is accepted, peeked, resolved, decided (default deny),
// answered 403, logged and closed. No upstream is dialled; the name is
// resolved because every listener mode resolves a name before deciding,
// but by a loopback stub and then from the gateway's cache, so the lookup
// is a map hit on nearly every connection.
//
//	go test -run=NONE -bench=PolicySize -benchtime=3s ./internal/gateway/
func BenchmarkPolicySize(b *testing.B) {
	dns := testnet.DNS(b, records{benchNoMatch: {"192.0.2.7"}})
	req := []byte("GET / HTTP/1.1\r\nHost: " + benchNoMatch + "\r\n\r\n")
	for _, n := range []int{10, 1_000, 100_000} {
		b.Run(fmt.Sprintf("patterns=%d", n), func(b *testing.B) {
			logs := &lastLog{}
			addr := startPolicyGateway(b, dns, n, logs)
			// One checked connection first, so that the figures are for the
			// path described above and not, say, a resolver failure.
			logs.arm()
			resp, err := policyConn(addr, req)
			if err != nil || !bytes.HasPrefix(resp, []byte("HTTP/1.1 403 ")) {
				b.Fatalf("response %q, %v; want a 403", resp, err)
			}
			if line := <-logs.ch; !bytes.Contains(line, []byte(`"fqdn":"`+benchNoMatch+`","fqdn_source":"host"`)) ||
				!bytes.Contains(line, []byte(`"rule":"","action":"deny"`)) {
				b.Fatalf("log %s; want a default deny of %s", line, benchNoMatch)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := policyConn(addr, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// policyConn sends req on a new connection and returns all the gateway
// answered before closing it.
func policyConn(addr string, req []byte) ([]byte, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := c.Write(req); err != nil {
		return nil, err
	}
	return io.ReadAll(c)
}

// startPolicyGateway serves an sni listener whose policy holds n fqdn
// patterns, shaped as internal/policy's benchRules: rules of ten patterns,
// half exact names and half wildcards, with three address rules (first,
// middle, last) that never match, so that every decision checks them too.
// The policy goes through the YAML a user would write, as a real load does.
func startPolicyGateway(b *testing.B, dns string, n int, logs io.Writer) string {
	var y strings.Builder
	fmt.Fprintf(&y, "listeners: [{name: a, mode: sni, address: 127.0.0.1:0}]\nresolver: %s\npolicy:\n  rules:\n", dns)
	addrRule := func(name string) {
		fmt.Fprintf(&y, "    - {name: %s, action: allow, destinations: [192.0.2.0/24, \"2001:db8::/32\"], ports: [22]}\n", name)
	}
	addrRule("ip-first")
	for i := 0; i < n; i += 10 {
		fmt.Fprintf(&y, "    - {name: r%d, action: allow, ports: [443], fqdn: [", i)
		for k := i; k < min(i+10, n); k++ {
			if k > i {
				y.WriteString(", ")
			}
			if k%2 == 0 {
				fmt.Fprintf(&y, "h%d.example.com", k)
			} else {
				fmt.Fprintf(&y, `"*.z%d.example.net"`, k)
			}
		}
		y.WriteString("]}\n")
		if i == n/20*10 {
			addrRule("ip-middle")
		}
	}
	addrRule("ip-last")
	return serveConfigTo(b, y.String(), time.Second, logs).Addrs()["a"].String()
}

// lastLog is an access-log writer that, once armed, hands the next line to
// ch and disarms; it discards the rest, so that the timed loop pays for no
// more than io.Discard would.
type lastLog struct {
	armed atomic.Bool
	ch    chan []byte
}

func (l *lastLog) arm() { l.ch = make(chan []byte, 1); l.armed.Store(true) }

func (l *lastLog) Write(p []byte) (int, error) {
	if l.armed.CompareAndSwap(true, false) {
		l.ch <- bytes.Clone(p)
	}
	return len(p), nil
}
