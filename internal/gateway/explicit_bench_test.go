package gateway

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/socks5"
	"github.com/egressd/egressd/internal/testnet"
)

// BenchmarkModes compares, in one process and one run, the cost of a
// connection and the throughput of a tunnel through the sni listener,
// HTTP CONNECT and SOCKS5 on loopback. Every client sends the same Go
// ClientHello (SNI bench.test) as its first tunnel bytes, so all three
// modes peek and parse a hello, resolve bench.test (cached), decide, dial,
// relay and log; the explicit modes add their own handshake.
//
//	go test -run=NONE -bench=Modes -benchtime=3s ./internal/gateway/
func BenchmarkModes(b *testing.B) {
	hello := captureHello(b, "bench.test")
	up := startBenchUpstream(b, len(hello))
	gw := startBenchGateway(b, up.Port())
	dial := map[string]func(c net.Conn, br *bufio.Reader) error{
		"sni": func(net.Conn, *bufio.Reader) error { return nil },
		"connect": func(c net.Conn, br *bufio.Reader) error {
			fmt.Fprintf(c, "CONNECT bench.test:%d HTTP/1.1\r\nHost: bench.test\r\n\r\n", up.Port())
			line, err := br.ReadString('\n')
			if err != nil || line != "HTTP/1.1 200 Connection established\r\n" {
				return fmt.Errorf("CONNECT: %q %v", line, err)
			}
			_, err = br.ReadString('\n')
			return err
		},
		"socks5": func(c net.Conn, br *bufio.Reader) error {
			c.Write(socks5.AppendRequest([]byte{5, 1, 0}, socks5.Request{Cmd: socks5.CmdConnect, Domain: "bench.test", Port: up.Port()}))
			var r [12]byte
			if _, err := io.ReadFull(br, r[:]); err != nil || r[1] != 0 || r[3] != 0 {
				return fmt.Errorf("SOCKS5: %x %v", r, err)
			}
			return nil
		},
	}
	for _, mode := range []string{"sni", "connect", "socks5"} {
		addr := gw[mode]
		// One connection: handshake, the hello, one byte back, close.
		b.Run(mode+"/handshake", func(b *testing.B) {
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := benchConn(addr, dial[mode], hello, 0); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conn/s")
		})
		// One tunnel carrying 64 MiB from the server to the client.
		b.Run(mode+"/download", func(b *testing.B) {
			const size = 64 << 20
			b.SetBytes(size)
			for b.Loop() {
				if err := benchConn(addr, dial[mode], hello, size); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchConn runs one client: connect, the mode's handshake, the hello,
// then read the server's byte and download bytes until it closes.
func benchConn(addr netip.AddrPort, handshake func(net.Conn, *bufio.Reader) error, hello []byte, download int64) error {
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(addr))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReaderSize(c, 64<<10)
	if err := handshake(c, br); err != nil {
		return err
	}
	if _, err := c.Write(hello); err != nil {
		return err
	}
	// Ask for the download size in the 8 bytes after the hello.
	var req [8]byte
	for i := range 8 {
		req[i] = byte(download >> (56 - 8*i))
	}
	if _, err := c.Write(req[:]); err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, br)
	if err != nil || n != download+1 {
		return fmt.Errorf("read %d bytes, want %d: %v", n, download+1, err)
	}
	return nil
}

// startBenchUpstream runs the server: it reads helloLen bytes and an
// 8-byte size, writes one byte and then size bytes, and closes.
func startBenchUpstream(b *testing.B, helloLen int) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	zero := make([]byte, 256<<10)
	testnet.Serve(b, ln, func(c net.Conn) {
		buf := make([]byte, helloLen+8)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		var size int64
		for _, x := range buf[helloLen:] {
			size = size<<8 | int64(x)
		}
		c.Write([]byte{1})
		for size > 0 {
			n, err := c.Write(zero[:min(int64(len(zero)), size)])
			if err != nil {
				return
			}
			size -= int64(n)
		}
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

func startBenchGateway(b *testing.B, port uint16) map[string]netip.AddrPort {
	cfgText := fmt.Sprintf(`listeners:
  - {name: sni, mode: sni, address: 127.0.0.1:0, upstream_port: %d}
  - {name: proxy, mode: explicit, address: 127.0.0.1:0}
resolver: %s
timeouts: {first_bytes: 1s, client_hello: 5s, connect: 5s, idle: 1m}
policy:
  rules:
    - {name: bench, action: allow, fqdn: ["bench.test"], destinations: ["127.0.0.0/8"]}
`, port, testnet.DNS(b, records{"bench.test": {"127.0.0.1"}}))
	a := serveConfigTo(b, cfgText, time.Second, io.Discard).Addrs()
	return map[string]netip.AddrPort{"sni": a["sni"], "connect": a["proxy"], "socks5": a["proxy"]}
}

// captureHello returns the ClientHello a Go TLS client sends for name.
func captureHello(b *testing.B, name string) []byte {
	client, server := net.Pipe()
	go tls.Client(client, &tls.Config{ServerName: name}).Handshake()
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(server, hdr); err != nil {
		b.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(server, body); err != nil {
		b.Fatal(err)
	}
	server.Close()
	client.Close()
	return append(hdr, body...)
}
