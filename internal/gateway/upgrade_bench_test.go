package gateway

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// BenchmarkUpload measures what reading a connection's client bytes for a
// ClientHello (upgradeWatch) costs a bulk upload: one CONNECT tunnel
// carries 64 MiB from the client, after first bytes that are a TLS hello
// (its watch ends at the server's answer, and the upload is spliced) or a
// line of a protocol of its own (read through the relay loop's buffer for
// the connection's life, as a server-first or unknown protocol is).
//
//	go test -run=NONE -bench=Upload -benchtime=20x ./internal/gateway/
func BenchmarkUpload(b *testing.B) {
	hello := captureHello(b, "bench.test")
	for _, tc := range []struct {
		name  string
		first []byte
	}{{"tls", hello}, {"unknown", []byte("PING bench.test\r\n")}} {
		up := startSink(b, len(tc.first))
		gw := startBenchGateway(b, up.Port())
		b.Run(tc.name, func(b *testing.B) {
			const size = 64 << 20
			b.SetBytes(size)
			chunk := make([]byte, 256<<10)
			for b.Loop() {
				c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(gw["connect"]))
				if err != nil {
					b.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(60 * time.Second))
				br := bufio.NewReader(c)
				fmt.Fprintf(c, "CONNECT bench.test:%d HTTP/1.1\r\nHost: bench.test\r\n\r\n", up.Port())
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						b.Fatal(err)
					}
					if line == "\r\n" {
						break
					}
				}
				c.Write(tc.first)
				if _, err := br.ReadByte(); err != nil {
					b.Fatal(err)
				}
				for sent := 0; sent < size; sent += len(chunk) {
					if _, err := c.Write(chunk); err != nil {
						b.Fatal(err)
					}
				}
				c.CloseWrite()
				var got [8]byte
				if _, err := io.ReadFull(br, got[:]); err != nil || binary.BigEndian.Uint64(got[:]) != size {
					b.Fatalf("the server read %d bytes (%v), want %d", binary.BigEndian.Uint64(got[:]), err, size)
				}
				c.Close()
			}
		})
	}
}

// startSink runs a server that reads firstLen bytes, answers one byte,
// reads to EOF and answers how many bytes it read after the first.
func startSink(b *testing.B, firstLen int) netip.AddrPort {
	ln := testnet.Listen(b)
	testnet.Serve(b, ln, func(c net.Conn) {
		if _, err := io.ReadFull(c, make([]byte, firstLen)); err != nil {
			return
		}
		c.Write([]byte{1})
		n, _ := io.Copy(io.Discard, c)
		var out [8]byte
		binary.BigEndian.PutUint64(out[:], uint64(n))
		c.Write(out[:])
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}
