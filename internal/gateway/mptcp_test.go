package gateway

import (
	"bytes"
	"crypto/tls"
	"net"
	"os"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// TestMultipathClient sends a client that asks for Multipath TCP through
// the sni listener. Go's net package makes listeners MPTCP by default, and
// an MPTCP socket has no SO_ORIGINAL_DST: egressd's listeners must stay
// plain TCP, so that such a client falls back to TCP and is relayed like
// any other.
func TestMultipathClient(t *testing.T) {
	if err := testnet.MPTCPWorks(func(f func() error) error { return f() }); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI's kernel must speak MPTCP: %v", err)
		}
		t.Skipf("the test would prove nothing: %v", err)
	}
	w := newWorld(t, baseRecords, basePolicy)
	var d net.Dialer
	d.SetMultipathTCP(true)
	raw, err := d.Dial("tcp", w.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c := tls.Client(raw, &tls.Config{ServerName: "good.test", InsecureSkipVerify: true})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Fatalf("handshake through egressd: %v", err)
	}
	echo(t, c, bytes.Repeat([]byte("multipath"), 50_000))
	if tc, ok := raw.(*net.TCPConn); ok {
		if mp, err := tc.MultipathTCP(); err != nil || mp {
			t.Errorf("the client's connection to egressd is Multipath TCP (err %v); want a fallback to TCP", err)
		}
	}
	c.Close()
	w.want(w.waitLog(bySrcPort(raw)), map[string]any{"action": "allow", "rule": "good", "fqdn": "good.test"})
}
