package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// BenchmarkServerFirstAnswer measures what the wait for a server-first
// client's late bytes adds: through a CONNECT tunnel to a greeter (which
// speaks first, like SMTP), the time from the client's answer to the
// server's reply. "answer-µs" is that round trip, per connection.
func BenchmarkServerFirstAnswer(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	testnet.Serve(b, ln, func(c net.Conn) {
		io.WriteString(c, "220 ready\r\n")
		br := bufio.NewReader(c)
		if _, err := br.ReadString('\n'); err == nil {
			io.WriteString(c, "221 bye\r\n")
		}
	})
	greeter := netip.MustParseAddrPort(ln.Addr().String())
	s := serveConfigTo(b, fmt.Sprintf(`listeners:
  - {name: proxy, mode: explicit, address: 127.0.0.1:0}
timeouts: {first_bytes: 50ms, client_hello: 2s, connect: 2s, idle: 1m}
policy:
  default: deny
  rules:
    - {name: greeter, action: allow, destinations: ["%s/32"]}
`, greeter.Addr()), time.Second, io.Discard)
	proxy := s.Addrs()["proxy"]
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := net.Dial("tcp", proxy.String())
		if err != nil {
			b.Fatal(err)
		}
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", greeter, greeter)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				b.Fatal(err)
			}
			if line == "\r\n" {
				break
			}
		}
		if line, err := br.ReadString('\n'); err != nil || line != "220 ready\r\n" {
			b.Fatalf("banner %q %v", line, err)
		}
		start := time.Now()
		io.WriteString(c, "QUIT\r\n")
		if line, err := br.ReadString('\n'); err != nil || line != "221 bye\r\n" {
			b.Fatalf("reply %q %v", line, err)
		}
		total += time.Since(start)
		c.Close()
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N), "answer-µs")
}
