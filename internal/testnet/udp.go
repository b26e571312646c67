package testnet

import (
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
)

// UDPSink counts the bytes of the datagrams a socket receives, read in
// batches (recvmmsg) so that the sink is not what limits a benchmark.
type UDPSink struct {
	Bytes atomic.Int64
	Last  atomic.Int64 // UnixNano of the last datagram
}

// Sink reads pc until it is closed, counting into a new UDPSink.
func Sink(pc *net.UDPConn) *UDPSink {
	s := &UDPSink{}
	pc.SetReadBuffer(16 << 20)
	go func() {
		p := ipv4.NewPacketConn(pc)
		ms := make([]ipv4.Message, 64)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, 2048)}
		}
		for {
			n, err := p.ReadBatch(ms, 0)
			if err != nil {
				return
			}
			var total int64
			for _, m := range ms[:n] {
				total += int64(m.N)
			}
			s.Bytes.Add(total)
			s.Last.Store(time.Now().UnixNano())
		}
	}()
	return s
}
