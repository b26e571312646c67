package relay

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The pump: each Conn moves its bytes when its loop reports its sockets
// ready, with splice(2) through a pooled pipe, and ends itself.

// Conn is a connection relayed by the event loop.
type Conn struct {
	l                *loop
	client, upstream side
	up, down         dir // client->upstream, upstream->client
	idle             int64
	last             int64 // loop time of the last byte moved
	idx              int   // position in l.conns
	done             func(Result)
	aborted          atomic.Bool
	closer           *side // the side whose EOF came first
	// fullAt is when a destination was last found full (loop time): for
	// a while after, its reader sets the pace, and a rest would only keep
	// bytes from it (see restPaced). One for both directions: a Conn
	// rests less, and stays within its allocation's size class.
	fullAt int64
	// watch reads the first bytes each way (Conn.Watch); nil for a
	// connection that has none, or once it has done.
	watch *watching

	// Under l.mu: relaying turns true when Start registers the client;
	// until then the loop only notes readiness, and closes
	// connected (if set) once a dialled upstream's connect has finished.
	relaying  bool
	connected chan struct{}
	// waiting: an asynchronous dial still connecting (DialAsync), set
	// under l.mu; nil for most dials, which connect inside the call.
	waiting *dialWait
	// connectErr is set with connected's close when the event that ended
	// the connect carried an error or hang-up: only then does Dial ask
	// the socket for the error (a getsockopt less per connection).
	connectErr bool
	// sent is how much of the first bytes given to Dial it wrote itself
	// (see startDial); Attach writes the rest.
	sent int32

	mu     sync.Mutex // guards closed against Close from other goroutines
	closed bool
}

// side is one socket of a Conn, with the readiness the loop last saw.
type side struct {
	c  *Conn
	fd int
	// peer is the other end's address, kept for errors. Both ends'
	// net.Addr values are made only when an error needs them (opError):
	// an idle relayed connection holds no address objects.
	peer               netip.AddrPort
	readable, writable bool
	gen                int32 // registration number, carried in the epoll event
	// muted: EPOLLIN is out of the socket's interest while the bytes it
	// gave cannot be written on (see mute).
	muted bool
	// rdhup: an event reported the peer's FIN (EPOLLRDHUP without an
	// error): once a read has emptied the socket, the next would say EOF.
	// hup: one reported a hang-up or an error, after which no edge comes:
	// a read that empties the socket is not its last.
	rdhup, hup bool
	// out: EPOLLOUT is in the socket's interest (see interest).
	out bool
}

// dir is one direction: bytes from src, through a pooled pipe held only
// while they move (or the loop's buffer, when no pipe is to spare), to
// dst.
type dir struct {
	src, dst *side
	// head is bytes to write to dst before any spliced ones: the first
	// bytes Attach was given (not counted in n), or, with copied set,
	// what a copy read and could not yet write (counted once written).
	// It is let go once written: a direction whose destination stalled
	// keeps no buffer after.
	head   []byte
	copied bool
	// splicing turns true once a read fills the loop's buffer (see
	// copyIn); it still copies while no pipe is to spare.
	splicing bool
	p        *pipe
	pending  int // bytes in p not yet written to dst
	n        int64
	eof      bool // src said EOF; passed on once the pipe is empty
	// bulk: the last splice from src moved a mid-sized batch, and the
	// direction rests once it is written (see rest); resting: it does;
	// restMuted: a rest took EPOLLIN out of src's interest, and the
	// direction reads on without it until src is empty.
	bulk, resting, restMuted bool
	// yielded: the direction spent its turn's budget with bytes still
	// readable, and waits in its loop's yield list to be moved again
	// once the loop has handled its batch (see turn budgets).
	yielded bool
	done    bool
	err     error
}

// Turn budgets: how much one direction moves per turn before the loop
// serves the rest of its batch of events. A turn ends at a short read, a
// full destination or an error; a sender faster than the relay, to a sink
// as fast, makes none of these happen, and every other connection on the
// loop would wait for as long as it keeps sending (accepts are bounded
// per event for the same reason, see acceptBatch). A direction that spent
// its budget while its source still holds bytes is queued on the loop
// (loop.yield): its socket is edge-triggered, and one left unread would
// never be reported again.
const (
	// copyTurn bounds reads into the loop's buffer: 4 full reads, 64
	// KiB. A watched direction's bytes are scanned in user space, the
	// slowest path (crafted bytes may scan at under 100 MB/s, some 0.6
	// ms for 64 KiB), so other connections wait about a millisecond at
	// worst; the yield costs an epoll_wait without timeout, well under
	// a percent of those reads' cost.
	copyTurn = 4
	// spliceTurn bounds bytes spliced from the source: 64 full pipes,
	// 16 MiB. Spliced bytes are not touched in user space and move at
	// GB/s, so a turn lasts a few milliseconds at most. At 1 MiB, eight
	// bulk streams on two loops moved about a tenth less (bench/ab.sh,
	// PARALLEL=8 download-raw, 4 rounds: 2,656 MB/s against 2,918
	// without a budget; 2,726 at 16 MiB).
	spliceTurn = 64 * pipeSize
)

// Start relays an attached Conn on the loop its upstream was dialled on.
// Should the client socket not register, both sockets are closed and done
// is called with the error on both directions.
func (c *Conn) Start() {
	if err := c.l.add(c); err != nil {
		c.done(Result{UpErr: err, DownErr: err, End: Failed, By: Local})
		// done ran off the loop: what it left for the loop's next batch
		// (see Loops.OnBatch) is let go now, as no batch may come.
		if c.l.onBatch != nil {
			_ = c.l.onBatch(true)
		}
	}
}

// closeSockets closes both sockets, under mu so that a concurrent Close
// never shuts down an fd number that has been reused.
func (c *Conn) closeSockets() {
	c.mu.Lock()
	c.closed = true
	c.client.closeFD()
	c.upstream.closeFD()
	c.mu.Unlock()
}

// Close ends the relay from any goroutine: both sockets are shut down, and
// the loop closes them and calls done with net.ErrClosed for each direction
// still running.
func (c *Conn) Close() error {
	c.aborted.Store(true)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		// The shutdown wakes the loop with EOF/HUP on both sockets.
		shutdownNB(c.client.fd, unix.SHUT_RDWR)
		shutdownNB(c.upstream.fd, unix.SHUT_RDWR)
	}
	return nil
}

// detach takes the socket out of the Go runtime's poller: a duplicate of
// its fd stays with the loop, and the net.Conn (and its registration) is
// closed. The socket itself lives on in the duplicate.
func (s *side) detach(nc *net.TCPConn) error {
	s.fd = -1
	if ap, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		s.peer = ap.AddrPort()
	}
	defer nc.Close()
	rc, err := nc.SyscallConn()
	if err != nil {
		return err
	}
	var derr error
	if err := rc.Control(func(fd uintptr) {
		s.fd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return err
	}
	return derr
}

func (s *side) closeFD() {
	if s.fd >= 0 {
		closeNB(s.fd)
		s.fd = -1
	}
}

// pump moves what both directions can move now.
func (c *Conn) pump() {
	if c.aborted.Load() {
		c.finish(net.ErrClosed, net.ErrClosed, nil, Drained, Local)
		return
	}
	for _, d := range [2]*dir{&c.up, &c.down} {
		if c.closed {
			return
		}
		c.move(d)
	}
}

// move runs one direction until it would block, ends, fails or has
// spent its turn's budget (see copyTurn), when it is queued to move on
// after the loop's batch.
func (c *Conn) move(d *dir) {
	if d.yielded {
		return // its turn comes from the yield list, after this batch
	}
	reads, spliced := 0, 0 // this turn's
	for !d.done {
		if !c.out(d) {
			if c.closed || d.dst.writable {
				return
			}
			c.fullAt = c.l.now
			d.bulk = false // the reader sets the pace now: no rest for this batch
			if !d.dst.out {
				if err := c.l.watchOut(d.dst); err != nil {
					c.fail(d, nil, err, nil) // never told when it drains
					return
				}
			}
			if !d.src.muted {
				c.l.mute(d.src, true) // best effort: unmuted, it only wakes more
			}
			return
		}
		if d.src.muted && !d.restMuted {
			if err := c.l.mute(d.src, false); err != nil {
				c.fail(d, nil, err, nil)
				return
			}
		}
		if d.eof {
			if d == &c.up && c.watch != nil && c.watch.holdSince != 0 {
				// The client's FIN comes after the bytes the Watch
				// holds: it is passed on once the hold ends (resume,
				// or the hold's timeout refuses the connection).
				return
			}
			c.ended(d)
			return
		}
		if d.resting {
			return // src is read when the rest ends (wakeRests)
		}
		if d.bulk {
			d.bulk = false
			if c.l.rest(c, d) {
				return
			}
		}
		if !d.src.readable {
			return
		}
		if reads >= copyTurn || spliced >= spliceTurn {
			c.l.yield(d)
			return
		}
		if !d.splicing {
			reads++
			if !c.copyIn(d) {
				return
			}
			continue
		}
		if d.p == nil {
			p, err := getPipe()
			if err != nil {
				// No pipe to spare: the budget is spent (see pipes), or
				// the process is out of fds. The bytes go through the
				// loop's buffer, as small messages do; the next read
				// that fills it asks for a pipe again.
				reads++
				if !c.copyIn(d) {
					return
				}
				continue
			}
			d.p = p
		}
		n, err := spliceNB(d.src.fd, d.p.w, pipeSize)
		switch err {
		case nil:
			if n == 0 {
				d.eof = true
				continue
			}
			d.pending = int(n)
			spliced += n
			c.last = c.l.now
			d.bulk = n >= restMin && n < restMax && c.l.now-c.fullAt > int64(restPaced)
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			// Nothing to read: the pipe is empty, give it back before the
			// connection waits.
			d.src.readable = false
			putPipe(d.p)
			d.p = nil
			if d.restMuted { // the rests are over: wait for the next edge
				d.restMuted = false
				if err := c.l.mute(d.src, false); err != nil {
					c.fail(d, nil, err, nil)
				}
			}
			return
		}
		var linger *side
		if err == unix.ECONNRESET {
			linger = d.dst // pass the reset on as a reset
		}
		c.fail(d, d.src, d.src.opError("read", err), linger)
		return
	}
}

// copyIn reads what src holds into the loop's buffer and writes it to
// dst, while a direction carries small messages (a TLS handshake's, an
// API call's): a read and a write, where splice needs one into a pipe,
// one out of it and a third to hear EAGAIN. A read that returns less than
// the buffer has emptied the socket (TCP reads everything queued), so the
// socket waits for its next edge without that third call; and with its
// peer's FIN already reported, the EOF needs no read either. A read that
// fills the buffer is a bulk transfer: the direction splices from then
// on. It reports false when the direction stops for now or has ended.
func (c *Conn) copyIn(d *dir) bool {
	buf := c.l.buf
	n, err := readNB(d.src.fd, buf)
	switch {
	case err == unix.EINTR:
		return true
	case err == unix.EAGAIN:
		d.src.readable = false
		return false
	case err != nil:
		var linger *side
		if err == unix.ECONNRESET {
			linger = d.dst
		}
		c.fail(d, d.src, d.src.opError("read", err), linger)
		return false
	case n == 0:
		d.eof = true
		return true
	}
	c.last = c.l.now
	b := buf[:n]
	watched := false
	if c.watch != nil {
		var ok bool
		if b, watched, ok = c.watched(d, b); !ok {
			return false
		}
	}
	switch {
	case n == len(buf):
		// A watched direction stays in the buffer, whose bytes the
		// Watch sees: the socket may hold more, read next.
		d.splicing = !watched
	case d.src.rdhup:
		d.eof = true
	case !d.src.hup:
		d.src.readable = false
	}
	return c.forward(d, b)
}

// forward writes b, read for d, to its destination, which holds nothing
// before it; what does not fit waits in d.head. It reports false when
// the write failed (and the connection ended).
func (c *Conn) forward(d *dir, b []byte) bool {
	for len(b) > 0 {
		m, err := writeNB(d.dst.fd, b)
		switch err {
		case nil:
			b = b[m:]
			d.n += int64(m)
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			d.dst.writable = false
			d.head, d.copied = append(d.head[:0], b...), true // rare: the buffer is the loop's
		default:
			c.writeFailed(d, err)
			return false
		}
		break
	}
	return true
}

// writeFailed ends the connection on a failed write to d's destination. A
// destination that reset is passed back to the source as a reset, as a
// reset read is passed forward: a client reading to EOF must not take a
// cut stream for a whole one.
func (c *Conn) writeFailed(d *dir, err error) {
	var linger *side
	if err == unix.ECONNRESET {
		linger = d.src
	}
	c.fail(d, d.dst, d.dst.opError("write", err), linger)
}

// out writes what d holds for its destination, head bytes first, then the
// pipe's. It reports false when the destination is full or the write
// failed (and the connection ended).
func (c *Conn) out(d *dir) bool {
	for len(d.head) > 0 || d.pending > 0 {
		if !d.dst.writable {
			return false
		}
		var err error
		if len(d.head) > 0 {
			var n int
			if n, err = writeNB(d.dst.fd, d.head); err == nil {
				if d.copied {
					d.n += int64(n)
				}
				if d.head = d.head[n:]; len(d.head) == 0 {
					d.head = nil
				}
			}
		} else {
			var n int
			if n, err = spliceNB(d.p.r, d.dst.fd, d.pending); err == nil {
				d.pending -= n
				d.n += int64(n)
			}
		}
		switch err {
		case nil:
			c.last = c.l.now
		case unix.EINTR:
		case unix.EAGAIN:
			d.dst.writable = false
			return false
		default:
			c.writeFailed(d, err)
			return false
		}
	}
	return true
}

// ended passes a clean EOF on: a half-close while the other direction
// runs, or the close of both when it has ended too (that close is the FIN;
// a shutdown(2) first would be a wasted call).
func (c *Conn) ended(d *dir) {
	if c.aborted.Load() {
		// The EOF may be Close's own shutdown, seen by a pump that
		// was already running: not the peer's.
		c.finish(net.ErrClosed, net.ErrClosed, nil, Drained, Local)
		return
	}
	d.done = true
	if c.closer == nil {
		c.closer = d.src
	}
	if d.p != nil {
		putPipe(d.p)
		d.p = nil
	}
	other := &c.up
	if d == &c.up {
		other = &c.down
	}
	if other.done {
		c.finish(nil, nil, nil, Closed, c.sideOf(c.closer))
		return
	}
	if err := shutdownNB(d.dst.fd, unix.SHUT_WR); err != nil {
		end, by := c.blame(d.dst, err)
		c.finish(nil, nil, nil, end, by)
	}
}

// fail ends the connection on d's error, an error on by's socket (nil:
// egressd's own, such as epoll's).
func (c *Conn) fail(d *dir, by *side, err error, linger *side) {
	up, down := net.ErrClosed, net.ErrClosed
	if d == &c.up {
		up = err
	} else {
		down = err
	}
	end, who := c.blame(by, err)
	c.finish(up, down, linger, end, who)
}

// blame says how err, an error on s's socket (nil: egressd's own), ended
// the connection, and whose doing it was. The direction an error surfaced
// in does not say: a client's reset fails the write of the upstream's
// bytes to it as much as the read of its own.
func (c *Conn) blame(s *side, err error) (End, Side) {
	switch {
	case s == nil:
		return Failed, Local
	case isReset(err) && s == c.closer:
		// Its socket answered bytes that came after its close: still a
		// close (see Closed).
		return Closed, c.sideOf(s)
	case isReset(err):
		return Reset, c.sideOf(s)
	}
	return Failed, c.sideOf(s)
}

func (c *Conn) sideOf(s *side) Side {
	switch s {
	case &c.client:
		return Client
	case &c.upstream:
		return Upstream
	}
	return Local
}

// finish closes both sockets and reports. upErr and downErr are the
// errors of directions that had not ended yet; end and by are how the
// connection ended.
func (c *Conn) finish(upErr, downErr error, linger *side, end End, by Side) {
	if c.closed {
		return
	}
	if c.aborted.Load() {
		// Close shut the sockets down; whatever this pump saw of that
		// (EPIPE, an early EOF) is the drain, not the peers.
		upErr, downErr = net.ErrClosed, net.ErrClosed
		end, by = Drained, Local
	}
	if !c.up.done {
		c.up.err = upErr
	}
	if !c.down.done {
		c.down.err = downErr
	}
	if linger != nil {
		unix.SetsockoptLinger(linger.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	}
	c.l.forget(c)
	c.closeSockets()
	for _, d := range [2]*dir{&c.up, &c.down} {
		if d.p == nil {
			continue
		}
		if d.pending == 0 {
			putPipe(d.p)
		} else {
			dropPipe(d.p) // bytes stuck in it: never hand them to another connection
		}
		d.p = nil
	}
	why := c.why()
	if c.watch != nil {
		c.unwatch() // before done: its caller may reuse the Watch at once
	}
	c.done(Result{
		Up: c.up.n, Down: c.down.n,
		UpErr: c.up.err, DownErr: c.down.err,
		End: end, By: by, Why: why,
	})
}

func (s *side) opError(op string, err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		err = errno
	}
	e := &net.OpError{Op: op, Net: "tcp", Err: err}
	if s.fd >= 0 {
		// The socket's own address is read only when an error needs it,
		// not on every connection.
		if ap := localAddr(s.fd); ap.IsValid() {
			e.Source = net.TCPAddrFromAddrPort(ap)
		}
	}
	if s.peer.IsValid() {
		e.Addr = net.TCPAddrFromAddrPort(s.peer)
	}
	return e
}
