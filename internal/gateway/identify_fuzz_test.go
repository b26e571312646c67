package gateway

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// FuzzDeniedNeverArrives is the identification path's property, through a
// real gateway: however a client shapes its first bytes — leading
// ChangeCipherSpec or alert records before its ClientHello, any HTTP
// method, writes split anywhere, a pause longer than first_bytes before it
// speaks — a name the policy denies never reaches the server inside a
// ClientHello or an HTTP request. Each input is a seed for one such client,
// on the sni listener or inside a CONNECT tunnel to an allowed name.
func FuzzDeniedNeverArrives(f *testing.F) {
	for _, seed := range []uint64{1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597} {
		f.Add(seed)
	}
	var once sync.Once
	var fw *fuzzWorld
	f.Fuzz(func(t *testing.T, seed uint64) {
		once.Do(func() { fw = newFuzzWorld(t) })
		fw.check(t, seed)
	})
}

// fuzzWorld is one gateway (sni and explicit listeners, first_bytes 50ms)
// in front of a raw server that keeps every byte it receives.
type fuzzWorld struct {
	sni, proxy netip.AddrPort
	server     netip.AddrPort
	mu         sync.Mutex
	all        bytes.Buffer
	hellos     map[string][]byte
}

func newFuzzWorld(t *testing.T) *fuzzWorld {
	fw := &fuzzWorld{hellos: map[string][]byte{}}
	// The world outlives this first input's t: the fuzz engine's worker
	// ends with the process.
	forever := &noCleanup{t}
	ln := testnet.Listen(forever)
	testnet.Serve(forever, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			fw.mu.Lock()
			fw.all.Write(buf[:n])
			fw.mu.Unlock()
			if err != nil {
				return
			}
		}
	})
	fw.server = netip.MustParseAddrPort(ln.Addr().String())
	dnsAddr := testnet.DNS(t, records{"good.test": {"127.0.0.1"}, "x.ads.test": {"127.0.0.1"}, "other.test": {"127.0.0.1"}})
	s := serveConfigTo(forever, fmt.Sprintf(`listeners:
  - {name: sni, mode: sni, address: 127.0.0.1:0, upstream_port: %d}
  - {name: proxy, mode: explicit, address: 127.0.0.1:0}
resolver: %s
timeouts: {first_bytes: 50ms, client_hello: 1s, connect: 1s, idle: 5s}
policy:
  default: deny
  rules:
    - {name: good, action: allow, fqdn: ["good.test"], destinations: ["127.0.0.0/8"]}
    - {name: ads, action: deny, fqdn: ["*.ads.test"]}
`, fw.server.Port(), dnsAddr), time.Second, io.Discard)
	fw.sni, fw.proxy = s.Addrs()["sni"], s.Addrs()["proxy"]
	for _, n := range []string{"good.test", "x.ads.test", "other.test"} {
		fw.hellos[n] = goHelloBytes(t, n)
	}
	return fw
}

// noCleanup is a testing.TB whose Cleanup does nothing: the fuzz world
// lives for the whole run.
type noCleanup struct{ *testing.T }

func (noCleanup) Cleanup(func()) {}

var fuzzMethods = []string{"GET", "POST", "PROPFIND", "MKCOL", "FOO", "M-SEARCH", "get", "X!#$%&'*+-.^_`|~Y"}

func (fw *fuzzWorld) check(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	name := []string{"x.ads.test", "other.test", "good.test"}[r.IntN(3)]
	var first []byte
	if r.IntN(2) == 0 {
		for range r.IntN(4) {
			if r.IntN(2) == 0 {
				first = append(first, 0x14, 0x03, 0x03, 0x00, 0x01, 0x01) // ChangeCipherSpec
			} else {
				first = append(first, 0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00) // warning alert
			}
		}
		first = append(first, fw.hellos[name]...)
	} else {
		first = fmt.Appendf(nil, "%s /%d HTTP/1.1\r\nHost: %s\r\nX-Seed: %d\r\n\r\n", fuzzMethods[r.IntN(len(fuzzMethods))], seed, name, seed)
	}
	viaTunnel := r.IntN(2) == 0
	pause := r.IntN(3) == 0

	target := fw.sni
	if viaTunnel {
		target = fw.proxy
	}
	c, err := net.DialTimeout("tcp", target.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if viaTunnel {
		fmt.Fprintf(c, "CONNECT good.test:%d HTTP/1.1\r\nHost: good.test:%d\r\n\r\n", fw.server.Port(), fw.server.Port())
		var resp [12]byte
		if _, err := io.ReadFull(c, resp[:]); err != nil || !strings.HasSuffix(string(resp[:]), "200") {
			t.Fatalf("CONNECT: %q %v", resp, err)
		}
	}
	if pause {
		time.Sleep(120 * time.Millisecond)
	}
	for len(first) > 0 {
		n := min(len(first), 1+r.IntN(600))
		if _, err := c.Write(first[:n]); err != nil {
			break // refused: the rest has nowhere to go
		}
		first = first[n:]
		if r.IntN(4) == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	// Until the gateway answers and closes; a relayed connection (the
	// server never answers) is left after a moment.
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.Copy(io.Discard, c)
	c.Close()
	time.Sleep(20 * time.Millisecond) // the server's read of anything relayed
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if name != "good.test" && bytes.Contains(fw.all.Bytes(), []byte(name)) {
		t.Fatalf("seed %d: %q reached the server (tunnel %v, pause %v)", seed, name, viaTunnel, pause)
	}
	fw.all.Reset()
}
