package quicproxy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
	// otherNoted counts the notes the flow's line took of other
	// connections' names (maxOtherNotes).
	otherNoted int
	// changedNoted: the flow's line already says that Initial packets
	// with a changed hello were dropped.
	changedNoted bool
	// conns are the connections decided on this flow, kept longer than
	// their keys.
	conns decidedConns
	// saved is what inspecting a datagram changed of keys, until its
	// verdict (inspectLocked).
	saved []saved
	pkts  []quic.Packet
	plain []byte // scratch for opening Initial packets
	// opens counts Keys.Open calls of the decided connections' keys, for
	// the tests to see what a datagram costs.
	opens int

	last                                 atomic.Int64 // the last datagram either way, UnixNano
	bytesUp, bytesDown, pktsUp, pktsDown atomic.Int64
	batchBytes                           atomic.Int64 // held by the two ways' batches
	downDone                             chan struct{}
	closeOnce                            sync.Once
}

// knownKeys open the Initial packets of one decided connection, whose
// CRYPTO bytes must be those of hello, the ClientHello decided (with its
// handshake header): the keys come from the connection ID alone, which the
// client chooses, so opening says nothing of what a packet carries.
type knownKeys struct {
	id      uint64 // of the connection, in the flow's decidedConns
	keys    *quic.Keys
	largest int64 // the largest packet number opened, -1 for none
	hello   []byte
	second  *secondHello // past hello, once any came (second.go)
}

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
			id := r.conns.id(f.asm.Version(), f.asm.DCID())
			r.conns.add(id, time.Now()) // the first: there is room
			r.keys = []knownKeys{{id: id, keys: keys, largest: -1, hello: bytes.Clone(f.asm.Hello())}}
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
		s.stats.drop(dropUndecided, len(c.take(s, f.key.src.Addr())))
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
		conns: newDecidedConns(), downDone: make(chan struct{}),
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
	w := way{c: r.client, bc: r.cb}
	defer w.release()
	for {
		n, ok := r.read(&w)
		if !ok {
			return
		}
		b := w.b
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
	w := way{c: r.up, bc: r.ub}
	defer w.release()
	for {
		n, ok := r.read(&w)
		if !ok {
			return
		}
		b := w.b
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

// way is one direction of a relayed flow, as its loop reads it.
type way struct {
	c  *net.UDPConn
	bc batchConn
	// b is the way's batch while datagrams come, nil while it is quiet.
	b *batch
	// heard: a datagram came since the read deadline was last set.
	heard bool
}

func (w *way) release() {
	if w.b != nil {
		w.b.put()
		w.b = nil
	}
}

// quietAfter is how long a way may have no datagram and keep its batch.
// A connection moving data sends far more often than that (every packet
// is acknowledged within max_ack_delay, 25 ms by default), so a busy flow
// keeps its batch and only sees its read deadline move on once a second;
// one kept alive by a datagram now and then holds its batch a second or
// two of the minutes between them.
const quietAfter = time.Second

// read reads w's next datagrams into w.b and returns how many, or false
// when the flow has ended. A way with a batch reads with a deadline of
// quietAfter; if none came by then, it gives the batch back and waits,
// holding no buffer, for the next datagram (until the flow's idle
// timeout), and then takes a batch again. A read deadline is also the idle
// check: the flow ends when neither way has had a datagram for Idle.
func (r *relay) read(w *way) (int, bool) {
	if w.b == nil {
		// Not a batch until the way's first datagram: a server that never
		// answers costs no buffer.
		w.c.SetReadDeadline(r.deadline(false))
	}
	for {
		var n int
		var err error
		if w.b == nil {
			if err = waitReadable(w.c); err == nil {
				w.b, w.heard = getBatch(&r.batchBytes), false
				w.c.SetReadDeadline(r.deadline(true))
				continue
			}
		} else if n, err = w.bc.ReadBatch(w.b.ms[:w.b.size], 0); err == nil {
			r.touch()
			w.heard = true
			return n, true
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			if r.stop(err) {
				return 0, false
			}
			continue
		}
		if time.Since(time.Unix(0, r.last.Load())) >= r.f.p.Idle {
			r.f.end(endIdle)
			return 0, false
		}
		if w.b != nil && !w.heard {
			w.release()
		}
		w.heard = false
		w.c.SetReadDeadline(r.deadline(w.b != nil))
	}
}

// deadline is the next read deadline of a way: when the flow would be
// idle, or sooner if the way holds a batch (quietAfter).
func (r *relay) deadline(batched bool) time.Time {
	idle := time.Unix(0, r.last.Load()).Add(r.f.p.Idle)
	if quiet := time.Now().Add(quietAfter); batched && quiet.Before(idle) {
		return quiet
	}
	return idle
}

// waitReadable waits until c has a datagram (or an error) queued, reading
// none, or until its read deadline.
func waitReadable(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			// MSG_PEEK into no buffer: EAGAIN while nothing is queued.
			_, _, perr = unix.Recvfrom(int(fd), nil, unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if perr != unix.EINTR {
				return perr != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return err
	}
	return perr
}

// stop handles a read error other than the deadline: true when the loop
// must end. An ICMP error (the server's port is closed, for now) is not
// the flow's end.
func (r *relay) stop(err error) bool {
	switch {
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
