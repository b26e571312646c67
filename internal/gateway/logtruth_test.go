package gateway

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
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

// TestLogEndNamesTheSide checks the reason a relayed connection's line
// ends with names the side that ended it: a client that resets while the
// server still sends is the client's doing, though egressd notices it
// writing the server's bytes; an ordinary close adds nothing.
func TestLogEndNamesTheSide(t *testing.T) {
	const timeouts = "{first_bytes: 200ms, client_hello: 2s, connect: 2s, idle: 10s}"
	for _, tc := range []struct {
		name   string
		server func(c *net.TCPConn)
		client func(c *net.TCPConn)
		reason string // the whole reason
	}{
		{
			name: "client resets while the upstream streams",
			server: func(c *net.TCPConn) {
				for buf := make([]byte, 16<<10); ; {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			},
			client: func(c *net.TCPConn) {
				io.ReadFull(c, make([]byte, 1000))
				c.SetLinger(0)
				c.Close()
			},
			reason: `matched rule "good"; client reset the connection`,
		},
		{
			name: "upstream resets",
			server: func(c *net.TCPConn) {
				c.Write([]byte("partial"))
				c.SetLinger(0) // the handler's return closes it
			},
			client: func(c *net.TCPConn) { io.Copy(io.Discard, c) },
			reason: `matched rule "good"; upstream reset the connection`,
		},
		{
			name: "client closes while the upstream still sends",
			server: func(c *net.TCPConn) {
				c.Write([]byte("a"))
				io.Copy(io.Discard, c) // until the client's EOF
				for buf := make([]byte, 16<<10); ; {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			},
			client: func(c *net.TCPConn) {
				io.ReadFull(c, make([]byte, 1))
				c.Close() // nothing unread: a FIN, not a reset
			},
			reason: `matched rule "good"; client closed the connection before the upstream had sent all`,
		},
		{
			name: "both close",
			server: func(c *net.TCPConn) {
				c.Write([]byte("bye"))
				io.Copy(io.Discard, c)
			},
			client: func(c *net.TCPConn) {
				io.ReadFull(c, make([]byte, 3))
				c.Close()
			},
			reason: `matched rule "good"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorldTimeouts(t, baseRecords, basePolicy, faultServer(t, tc.server), timeouts)
			c, err := net.Dial("tcp", w.addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(craftedHello("good.test")); err != nil {
				t.Fatal(err)
			}
			tc.client(c.(*net.TCPConn))
			e := w.waitLog(bySrcPort(c))
			if r, _ := e["reason"].(string); r != tc.reason {
				t.Errorf("log reason %q, want %q", r, tc.reason)
			}
			if strings.Contains(e["reason"].(string), "connection reset by peer") {
				t.Errorf("log reason %q quotes the error of the side that noticed", e["reason"])
			}
		})
	}
}
