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
	pkts         []quic.Packet
	plain        []byte // scratch for opening Initial packets

	last                                 atomic.Int64 // the last datagram either way, UnixNano
	bytesUp, bytesDown, pktsUp, pktsDown atomic.Int64
	downDone                             chan struct{}
	closeOnce                            sync.Once
}

// knownKeys open the Initial packets of one decided connection, whose
// CRYPTO bytes must be those of hello, the ClientHello decided (with its
// handshake header): the keys come from the connection ID alone, which the
// client chooses, so opening says nothing of what a packet carries.
type knownKeys struct {
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
			r.keys = []knownKeys{{keys: keys, largest: -1, hello: bytes.Clone(f.asm.Hello())}}
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
