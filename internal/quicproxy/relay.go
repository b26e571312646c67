package quicproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/quic"
	"github.com/egressd/egressd/internal/upstream"
)

// relay is an allowed flow's two sockets and what it knows of the
// connections it carries.
type relay struct {
	f      *flow
	dst    netip.AddrPort
	client *net.UDPConn // bound to the original destination, connected to the client
	up     *net.UDPConn // carries the mark, connected to dst
	cb, ub batchConn

	// Under f.mu.
	keys  []knownKeys // of the connections decided on this flow
	check *recheck    // a connection being decided, if any
	pkts  []quic.Packet
	plain []byte // scratch for opening Initial packets

	last                                 atomic.Int64 // the last datagram either way, UnixNano
	bytesUp, bytesDown, pktsUp, pktsDown atomic.Int64
	downDone                             chan struct{}
	closeOnce                            sync.Once
}

// knownKeys open the Initial packets of one decided connection.
type knownKeys struct {
	keys    *quic.Keys
	largest int64 // the largest packet number opened, -1 for none
}

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

// relayFlow relays an allowed flow until it is idle or closed, then writes
// its line.
func (f *flow) relayFlow(v Verdict) {
	s := f.s
	f.rec.Dst = v.Dst
	r, err := newRelay(f, v.Dst)
	f.mu.Lock()
	if err == nil && f.st != ended {
		keys, kerr := quic.ClientInitialKeys(f.asm.Version(), f.asm.DCID())
		if kerr != nil { // cannot happen: these keys opened the hello
			err = kerr
		} else {
			f.st, f.relay = relaying, r
			r.keys = []knownKeys{{keys: keys, largest: -1}}
		}
	}
	if f.st != relaying {
		held := len(f.takeHeldLocked())
		f.endLocked(endFailed, err)
		f.mu.Unlock()
		if r != nil {
			r.close()
		}
		s.stats.drop(dropUndecided, held)
		if err != nil {
			f.rec.Reason += "; relay failed: " + err.Error()
		} else {
			f.rec.Reason += "; closed by egressd: drain over"
		}
		s.cfg.Logged(&f.rec)
		return
	}
	f.asm = nil // decided: the hello's buffer can go
	r.touch()
	for _, d := range f.takeHeldLocked() {
		r.forwardLocked(d)
	}
	f.mu.Unlock()

	s.wg.Add(1)
	go r.downLoop()
	r.upLoop()
	<-r.downDone

	f.mu.Lock()
	f.endLocked(endNone, nil)
	cause, failure := f.cause, f.failure
	if c := r.check; c != nil {
		s.stats.drop(dropUndecided, len(c.take(s)))
		r.check = nil
	}
	f.mu.Unlock()
	f.rec.BytesUp, f.rec.BytesDown = r.bytesUp.Load(), r.bytesDown.Load()
	f.rec.PacketsUp, f.rec.PacketsDown = r.pktsUp.Load(), r.pktsDown.Load()
	switch cause {
	case endIdle:
		f.rec.Reason += "; closed: idle timeout"
	case endDrained:
		f.rec.Reason += "; closed by egressd: drain over"
	case endFailed:
		f.rec.Reason += "; relay failed: " + fmt.Sprint(failure)
	}
	s.cfg.Logged(&f.rec)
}

// newRelay opens the flow's two sockets.
func newRelay(f *flow, dst netip.AddrPort) (*relay, error) {
	network := listener.Network("udp", dst)
	c, err := upstream.NetDialer(0, f.p.Mark).DialContext(f.s.ctx, network, dst.String())
	if err != nil {
		return nil, fmt.Errorf("socket towards %s: %w", dst, err)
	}
	up := c.(*net.UDPConn)
	client, err := listener.DialUDPFrom(f.key.orig, f.key.src, f.p.Transparent)
	if err != nil {
		up.Close()
		return nil, fmt.Errorf("socket from %s to the client: %w", f.key.orig, err)
	}
	for _, c := range []*net.UDPConn{up, client} {
		c.SetReadBuffer(flowBuffer)
		c.SetWriteBuffer(flowBuffer)
	}
	return &relay{
		f: f, dst: dst, client: client, up: up,
		cb: newBatchConn(client, f.key.orig.Addr().Is6()), ub: newBatchConn(up, dst.Addr().Is6()),
		downDone: make(chan struct{}),
	}, nil
}

// flowBuffer is the socket buffer each way of a relayed flow's sockets
// (capped by net.core.rmem_max and wmem_max): room for a burst of a fast
// transfer while the relay is not scheduled. The kernel takes memory
// only for datagrams queued.
const flowBuffer = 1 << 20

func (r *relay) close() {
	r.closeOnce.Do(func() {
		r.client.Close()
		r.up.Close()
	})
}

func (r *relay) touch() { r.last.Store(time.Now().UnixNano()) }

// fromListener relays a datagram that reached the listening socket rather
// than the flow's own: it was queued there before the flow's socket was
// connected.
func (r *relay) fromListener(d []byte) {
	r.touch()
	r.forwardLocked(d)
}

// forwardLocked inspects d and, if it may pass, sends it to the server.
func (r *relay) forwardLocked(d []byte) {
	if r.inspectLocked(d) != pass {
		return
	}
	if _, err := r.up.Write(d); err == nil {
		r.bytesUp.Add(int64(len(d)))
		r.pktsUp.Add(1)
	}
}

// upLoop relays the client's datagrams to the server, in batches, each
// inspected, until the flow ends.
func (r *relay) upLoop() {
	b := newBatch()
	defer b.free()
	r.client.SetReadDeadline(time.Now().Add(r.f.p.Idle))
	for {
		n, err := r.cb.ReadBatch(b.ms[:b.size], 0)
		if err != nil {
			if r.stop(err, r.client) {
				return
			}
			continue
		}
		r.touch()
		out := 0
		r.f.mu.Lock()
		for i := range b.ms[:n] {
			m := &b.ms[i]
			if m.Flags&flagTrunc != 0 {
				r.f.s.stats.drop(dropTooBig, 1)
				continue
			}
			if d := m.Buffers[0][:m.N]; r.inspectLocked(d) == pass {
				b.out[out].Buffers[0] = d
				out++
			}
		}
		r.f.mu.Unlock()
		r.write(r.ub, b.out[:out], &r.bytesUp, &r.pktsUp)
		b.adapt(n)
	}
}

// downLoop relays the server's datagrams to the client, in batches, until
// the flow ends. The server's packets pass as they are: Retry and Version
// Negotiation packets included.
func (r *relay) downLoop() {
	defer r.f.s.wg.Done()
	defer close(r.downDone)
	b := newBatch()
	defer b.free()
	r.up.SetReadDeadline(time.Now().Add(r.f.p.Idle))
	for {
		n, err := r.ub.ReadBatch(b.ms[:b.size], 0)
		if err != nil {
			if r.stop(err, r.up) {
				return
			}
			continue
		}
		r.touch()
		out := 0
		for i := range b.ms[:n] {
			m := &b.ms[i]
			if m.Flags&flagTrunc != 0 {
				r.f.s.stats.drop(dropTooBig, 1)
				continue
			}
			b.out[out].Buffers[0] = m.Buffers[0][:m.N]
			out++
		}
		r.write(r.cb, b.out[:out], &r.bytesDown, &r.pktsDown)
		b.adapt(n)
	}
}

// stop handles a read error on c: true when the loop must end. A read
// deadline is the idle check: the flow ends when neither way has had a
// datagram for Idle, else the deadline moves on. An ICMP error (the
// server's port is closed, for now) is not the flow's end.
func (r *relay) stop(err error, c *net.UDPConn) bool {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		last := time.Unix(0, r.last.Load())
		if time.Since(last) >= r.f.p.Idle {
			r.f.end(endIdle)
			return true
		}
		c.SetReadDeadline(last.Add(r.f.p.Idle))
		return false
	case errors.Is(err, net.ErrClosed):
		return true
	case transient(err):
		return false
	}
	r.f.mu.Lock()
	r.f.endLocked(endFailed, err)
	r.f.mu.Unlock()
	return true
}

// transient reports whether a socket error leaves the flow as it was: an
// ICMP error reported on a connected socket, or a full buffer.
func transient(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EAGAIN)
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

// verdict is what becomes of one client datagram of a relayed flow.
type verdict uint8

const (
	pass    verdict = iota // relay it
	held                   // kept until a new connection is decided
	dropped                // counted and forgotten
)

// inspectLocked decides one client datagram of a relayed flow. A
// short-header packet passes: it belongs to a connection the server
// already has. Long-header packets are read: a Handshake or 0-RTT packet
// passes (the server cannot open it without the Initial of its connection),
// an Initial passes if the keys of a decided connection open it, and any
// other Initial starts a recheck. A client never sends a Retry or Version
// Negotiation packet, and an unknown version is not relayed.
func (r *relay) inspectLocked(d []byte) verdict {
	if len(d) == 0 {
		r.f.s.stats.drop(dropMalformed, 1)
		return dropped
	}
	if !hasLongHeader(d) {
		return pass
	}
	pkts, err := quic.ParseDatagram(d, r.pkts[:0])
	defer func() { clear(pkts); r.pkts = pkts[:0] }()
	if err != nil {
		r.f.s.stats.drop(dropMalformed, 1)
		return dropped
	}
	unknown := false
	for i := range pkts {
		switch p := &pkts[i]; p.Type {
		case quic.Initial:
			if !r.opensLocked(p) {
				unknown = true
			}
		case quic.ZeroRTT, quic.Handshake, quic.ShortHeader:
		default:
			r.f.s.stats.drop(dropUnknownVersion, 1)
			return dropped
		}
	}
	if !unknown {
		return pass
	}
	return r.recheckLocked(d, pkts)
}

// opensLocked reports whether the keys of a decided connection open p.
func (r *relay) opensLocked(p *quic.Packet) bool {
	for i := range r.keys {
		k := &r.keys[i]
		out, pn, err := k.keys.Open(r.plain[:0], p, k.largest)
		if cap(out) > cap(r.plain) {
			r.plain = out[:0]
		}
		if err == nil {
			k.largest = max(k.largest, int64(pn))
			return true
		}
	}
	return false
}

// batch is one direction's messages for recvmmsg and sendmmsg. Its size
// follows the traffic: it doubles while reads fill it, up to maxBatch, and
// halves when they come back nearly empty, so that a quiet flow holds two
// buffers and a bulk transfer moves 32 datagrams a system call.
type batch struct {
	ms, out []ipv4.Message
	size    int
}

const minBatch, maxBatch = 2, 32

var bufPool = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

func newBatch() *batch {
	b := &batch{ms: make([]ipv4.Message, maxBatch), out: make([]ipv4.Message, maxBatch)}
	for i := range b.out {
		b.out[i].Buffers = make([][]byte, 1)
	}
	b.resize(minBatch)
	return b
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
		case i < size && m.Buffers == nil:
			m.Buffers = [][]byte{*bufPool.Get().(*[]byte)}
		case i >= size && m.Buffers != nil:
			buf := m.Buffers[0][:maxDatagram]
			bufPool.Put(&buf)
			m.Buffers = nil
		}
	}
	b.size = size
}

func (b *batch) free() { b.resize(0) }

// recheck is a connection started on a relayed flow whose Initial packets
// no decided connection's keys open: a client's new ClientHello after a
// Retry, or another connection from the same socket. Its datagrams are
// held until its hello is decided.
type recheck struct {
	asm       quic.Assembler
	held      [][]byte
	heldBytes int
	deadline  time.Time
	deciding  bool
}

// recheckLocked holds d, whose Initial packets (pkts) no decided
// connection opens, for the connection they start; one such connection is
// decided at a time.
func (r *relay) recheckLocked(d []byte, pkts []quic.Packet) verdict {
	f, s := r.f, r.f.s
	now := time.Now()
	c := r.check
	if c != nil && !c.deciding && now.After(c.deadline) {
		s.stats.drop(dropUndecided, len(c.take(s)))
		r.check, c = nil, nil
	}
	if c == nil {
		// Retried: the connection ID after a Retry is the server's, of any
		// length. A new connection with a short one gets no further for
		// it: its name is decided all the same (and servers drop it).
		c = &recheck{deadline: now.Add(f.p.HelloTimeout)}
		c.asm.Retried = true
		if c.asm.AddDatagram(d); c.asm.DCID() == nil {
			s.stats.drop(dropMalformed, 1)
			return dropped
		}
		r.check = c
	} else {
		if !c.owns(pkts) {
			s.stats.drop(dropHeldFull, 1) // a third connection: one at a time
			return dropped
		}
		if !c.deciding {
			c.asm.AddDatagram(d)
		}
	}
	if !c.hold(s, d) {
		return dropped
	}
	switch c.asm.Status() {
	case quic.Complete:
		if !c.deciding {
			c.deciding = true
			s.wg.Add(1)
			go r.decide(c)
		}
	case quic.Invalid:
		s.stats.drop(dropUndecided, len(c.take(s)))
		r.check = nil
	}
	return held
}

// owns reports whether pkts hold an Initial packet of c's connection.
func (c *recheck) owns(pkts []quic.Packet) bool {
	for i := range pkts {
		if p := &pkts[i]; p.Type == quic.Initial && p.Version == c.asm.Version() && string(p.DCID) == string(c.asm.DCID()) {
			return true
		}
	}
	return false
}

func (c *recheck) hold(s *Server, d []byte) bool {
	if len(c.held) >= maxHeldPerFlow || c.heldBytes+len(d) > maxHeldBytesPerFlow {
		s.stats.drop(dropHeldFull, 1)
		return false
	}
	if s.held.Add(int64(len(d))) > maxHeldBytes {
		s.held.Add(-int64(len(d)))
		s.stats.drop(dropHeldFull, 1)
		return false
	}
	c.held = append(c.held, append([]byte(nil), d...))
	c.heldBytes += len(d)
	return true
}

func (c *recheck) take(s *Server) [][]byte {
	h := c.held
	s.held.Add(-int64(c.heldBytes))
	c.held, c.heldBytes = nil, 0
	return h
}

// decide decides a rechecked connection as a new flow would be, with a
// line of its own when it is refused. It passes only if it is allowed to
// the flow's own server: the flow's socket goes nowhere else.
func (r *relay) decide(c *recheck) {
	f, s := r.f, r.f.s
	defer s.wg.Done()
	rec := accesslog.Record{
		Start: time.Now(), Listener: f.p.Listener, Src: f.key.src, Dst: f.key.orig,
		Protocol: accesslog.ProtocolQUIC, FQDNSource: accesslog.FromNone, Enforced: f.p.Enforce,
	}
	info, ok := parseHello(c.asm.Hello())
	var v Verdict
	if ok {
		v = s.cfg.Decide(s.ctx, &rec, &Hello{Src: f.key.src, Orig: f.key.orig, Info: info})
	} else {
		rec.Action, rec.Reason = accesslog.Deny, "malformed TLS ClientHello in QUIC Initial packets"
	}
	f.mu.Lock()
	if f.st != relaying || r.check != c {
		f.mu.Unlock()
		return // the flow ended; its end dropped what was held
	}
	r.check = nil
	heldDatagrams := c.take(s)
	if ok && v.Allow && v.Dst == r.dst {
		keys, err := quic.ClientInitialKeys(c.asm.Version(), c.asm.DCID())
		if err == nil {
			r.keys = append(r.keys, knownKeys{keys: keys, largest: -1})
			if rec.FQDN != f.rec.FQDN {
				f.rec.Reason += fmt.Sprintf("; another connection on this flow named %q (%s)", rec.FQDN, rec.Reason)
			}
			for _, d := range heldDatagrams {
				r.forwardLocked(d)
			}
			f.mu.Unlock()
			if rec.Action == accesslog.Deny {
				s.cfg.Logged(&rec) // report-only: a deny let through has its line
			}
			return
		}
	}
	var closePkt []byte
	if !f.p.Drop {
		closePkt, _ = c.asm.AppendClose(nil, quic.CodeAccessDenied, denyPhrase(rec.Rule))
	}
	f.mu.Unlock()
	s.stats.drop(dropDenied, len(heldDatagrams))
	if closePkt != nil && s.closes.allow(time.Now()) {
		if _, err := r.client.Write(closePkt); err == nil {
			s.stats.closes.Add(1)
		}
	}
	rec.Action, rec.Enforced = accesslog.Deny, true
	if ok && v.Allow {
		rec.Reason = fmt.Sprintf("a second QUIC connection on the flow to %s names %s, to be relayed to %s: refused (%s)", r.dst, rec.FQDN, v.Dst, rec.Reason)
	}
	rec.Reason += fmt.Sprintf("; on a flow allowed for %q", f.rec.FQDN)
	s.cfg.Logged(&rec)
}
