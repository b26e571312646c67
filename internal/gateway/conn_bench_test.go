package gateway

import (
	"io"
	"net"
	"testing"
	"time"
)

// BenchmarkConnection measures whole connections on a real loopback
// socket: accept, peek an HTTP request without a Host, decide (no name to
// route on: deny), answer 403, log, close. It is the new-connection rate
// with no DNS and no upstream, so what it sees is the gateway's own cost
// per connection.
func BenchmarkConnection(b *testing.B) {
	for _, tc := range []struct{ name, extra string }{
		{"limits=off", ""},
		{"limits=on", "limits: {max_connections: 1000000, max_connections_per_source: 1000000, max_pending_handshakes: 1000000}\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			addr := serveConfigTo(b, "listeners: [{name: a, mode: sni, address: 127.0.0.1:0}]\n"+tc.extra, time.Second, io.Discard).Addrs()["a"].String()
			req := []byte("GET / HTTP/1.1\r\nHost: \r\n\r\n")
			buf := make([]byte, 512)
			b.ResetTimer()
			for range b.N {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				c.Write(req)
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
				c.Close()
			}
		})
	}
}
