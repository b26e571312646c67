package quicproxy

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// batchConn is the batch I/O of golang.org/x/net: recvmmsg and sendmmsg.
// ipv4.PacketConn and ipv6.PacketConn both have it, on the same Message.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func newBatchConn(c *net.UDPConn, v6 bool) batchConn {
	if v6 {
		return ipv6.NewPacketConn(c)
	}
	return ipv4.NewPacketConn(c)
}

// flagTrunc is MSG_TRUNC in a received message's flags: the datagram was
// longer than the buffer.
const flagTrunc = unix.MSG_TRUNC

// batch is one direction's messages for recvmmsg and sendmmsg. Its size
// follows the traffic: it doubles while reads fill it, up to maxBatch, and
// halves when they come back nearly empty, so that a slow flow reads into
// two buffers and a bulk transfer moves 32 datagrams a system call. A way
// that goes quiet gives its whole batch back (relay.read): a burst grows a
// batch, and a flow may then be kept for minutes by a datagram now and
// then, so what a flow holds must not be what its last burst needed.
type batch struct {
	ms, out []ipv4.Message
	size    int
	held    *atomic.Int64 // the relay's batchBytes, while the batch is its
}

const minBatch, maxBatch = 2, 32

var (
	bufPool   = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}
	batchPool = sync.Pool{New: func() any {
		b := &batch{ms: make([]ipv4.Message, maxBatch), out: make([]ipv4.Message, maxBatch)}
		for i := range maxBatch {
			b.ms[i].Buffers, b.out[i].Buffers = make([][]byte, 1), make([][]byte, 1)
		}
		return b
	}}
)

// batchArrays is what a batch's message arrays take, buffers aside.
var batchArrays = int64(2 * maxBatch * (unsafe.Sizeof(ipv4.Message{}) + unsafe.Sizeof([]byte(nil))))

// getBatch takes a batch of minBatch buffers, counted in held until put.
func getBatch(held *atomic.Int64) *batch {
	b := batchPool.Get().(*batch)
	b.held = held
	held.Add(batchArrays)
	b.resize(minBatch)
	return b
}

// put gives b and its buffers back to their pools.
func (b *batch) put() {
	b.resize(0)
	for i := range b.out {
		b.out[i].Buffers[0] = nil // a view of a buffer just given back
	}
	b.held.Add(-batchArrays)
	b.held = nil
	batchPool.Put(b)
}

func (b *batch) adapt(n int) {
	switch {
	case n == b.size && b.size < maxBatch:
		b.resize(2 * b.size)
	case n <= b.size/4 && b.size > minBatch:
		b.resize(b.size / 2)
	}
}

func (b *batch) resize(size int) {
	for i := range b.ms {
		m := &b.ms[i]
		switch {
		case i < size && m.Buffers[0] == nil:
			m.Buffers[0] = *bufPool.Get().(*[]byte)
		case i >= size && m.Buffers[0] != nil:
			buf := m.Buffers[0][:maxDatagram]
			bufPool.Put(&buf)
			m.Buffers[0] = nil
		}
	}
	b.held.Add(int64(size-b.size) * maxDatagram)
	b.size = size
}

// write sends ms, counting what went: with UDP GSO where the kernel has
// it (gsoWrite), else with sendmmsg as they are. A datagram the kernel
// refuses (an ICMP error, a full buffer) is dropped, as the network would.
func (r *relay) write(c batchConn, ms []ipv4.Message, bytes, pkts *atomic.Int64) {
	if len(ms) > 1 && !r.f.s.noGSO.Load() {
		if r.gsoWrite(c, ms, bytes, pkts) {
			return
		}
	}
	r.writeEach(c, ms, bytes, pkts)
}

func (r *relay) writeEach(c batchConn, ms []ipv4.Message, bytes, pkts *atomic.Int64) {
	for len(ms) > 0 {
		n, err := c.WriteBatch(ms, 0)
		for i := range ms[:max(n, 0)] {
			bytes.Add(int64(len(ms[i].Buffers[0])))
		}
		pkts.Add(int64(max(n, 0)))
		if err != nil {
			if !transient(err) {
				return
			}
			n = max(n, 0) + 1 // skip the datagram that failed
		}
		ms = ms[min(n, len(ms)):]
	}
}

// UDP generic segmentation offload (UDP_SEGMENT, Linux 4.18): one send of
// several datagrams of one size (the last may be shorter) laid end to end
// goes through the stack as one packet and is cut only at the device, or
// on the receiver's side of a veth: a bulk transfer costs the gateway a
// fraction of the per-datagram work. At most gsoMaxSegments datagrams and
// gsoMaxBytes bytes a send.
const (
	gsoMaxSegments = 64
	gsoMaxBytes    = 65000
)

var gsoPool = sync.Pool{New: func() any { b := make([]byte, 0, maxBatch*maxDatagram); return &b }}

// gsoWrite sends ms as runs of equal-sized datagrams, each run one message
// with its segment size; false if the kernel refused UDP_SEGMENT (then
// nothing was sent, and GSO is off for the Server from now on).
func (r *relay) gsoWrite(c batchConn, ms []ipv4.Message, bytes, pkts *atomic.Int64) bool {
	bp := gsoPool.Get().(*[]byte)
	defer gsoPool.Put(bp)
	buf := (*bp)[:0]
	var out [maxBatch]ipv4.Message
	var oobs [maxBatch][unix.SizeofCmsghdr + 8]byte
	var counts [maxBatch]int
	runs := 0
	for i := 0; i < len(ms); {
		start, size := len(buf), len(ms[i].Buffers[0])
		n := 0
		for i < len(ms) && n < gsoMaxSegments {
			d := ms[i].Buffers[0]
			if len(d) > size || len(buf)-start+len(d) > gsoMaxBytes {
				break
			}
			buf = append(buf, d...)
			i, n = i+1, n+1
			if len(d) < size {
				break // a shorter datagram ends the run
			}
		}
		out[runs].Buffers = [][]byte{buf[start:]}
		out[runs].OOB = nil
		if n > 1 {
			out[runs].OOB = segmentSize(oobs[runs][:], size)
		}
		counts[runs] = n
		runs++
	}
	sent := out[:runs]
	for len(sent) > 0 {
		n, err := c.WriteBatch(sent, 0)
		for i := range sent[:max(n, 0)] {
			bytes.Add(int64(len(sent[i].Buffers[0])))
			pkts.Add(int64(counts[runs-len(sent)+i]))
		}
		if err != nil {
			if n <= 0 && len(sent) == runs && (errors.Is(err, syscall.EIO) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOPROTOOPT)) {
				r.f.s.noGSO.Store(true)
				r.f.s.cfg.Log.Info("udp: the kernel refuses UDP GSO; sending datagram by datagram", "err", err)
				return false
			}
			if !transient(err) {
				return true
			}
			n = max(n, 0) + 1
		}
		sent = sent[min(n, len(sent)):]
	}
	return true
}

// segmentSize writes a UDP_SEGMENT control message for size into b.
func segmentSize(b []byte, size int) []byte {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], uint16(size))
	return b[:unix.CmsgSpace(2)]
}
