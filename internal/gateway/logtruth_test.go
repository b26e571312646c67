package gateway

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestLogALPNOffer checks the log's alpn is the list a real crypto/tls
// client offered, id by id: one id holds a comma, which a joined string
// would have split in two.
func TestLogALPNOffer(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	offer := []string{"x,y", `q"uote`, "h2"}
	raw, err := net.Dial("tcp", w.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c := tls.Client(raw, &tls.Config{ServerName: "api.good.test", InsecureSkipVerify: true, NextProtos: offer})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Handshake() // what the server makes of the offer does not matter here
	c.Close()
	e := w.waitLog(bySrcPort(raw))
	want := []any{"x,y", `q"uote`, "h2"}
	if diff := cmp.Diff(want, e["alpn"]); diff != "" {
		t.Errorf("log alpn (-want +got):\n%s", diff)
	}
}
