// Package relay copies bytes both ways between a client and its upstream
// until both sides are done, passing half-closes on and ending connections
// that stay idle.
//
// On Linux an event loop (Dial, Attach, Start) dials the upstream and moves
// bytes with splice(2) through a pipe that is taken from a shared pool only
// while bytes are moving, and given back as soon as the source has nothing
// more to read. An idle proxied connection so holds exactly its two
// sockets: no pipe, no buffer, no goroutine. (io.Copy between two TCPConns
// splices too, but holds a pipe per direction for the connection's whole
// life: four extra fds and their kernel memory per idle connection, and a
// goroutine stack per direction.) Relay is the portable path, used off
// Linux: a goroutine per direction copying through a pooled buffer.
package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Result is what one relayed connection moved and how it ended.
type Result struct {
	Up   int64 // client -> upstream
	Down int64 // upstream -> client
	// UpErr and DownErr are nil when the direction ended with a clean EOF
	// from its source. They say where an error surfaced, not whose doing
	// it was: a client's reset fails the write of the upstream's bytes to
	// it, in the upstream->client direction. End and By say whose.
	UpErr, DownErr error
	// End is how the connection ended, and By the side that ended it.
	End End
	By  Side
}

// Side is one party to a relayed connection.
type Side uint8

const (
	Local    Side = iota // egressd itself: its idle timeout, its Close, its own failure
	Client               // the accepted socket
	Upstream             // the dialled socket
)

// String returns "egressd", "client" or "upstream", as the access log
// words them.
func (s Side) String() string {
	switch s {
	case Client:
		return "client"
	case Upstream:
		return "upstream"
	}
	return "egressd"
}

// End is how a relayed connection ended.
type End uint8

const (
	// Closed: By closed first (its EOF came first) and the other side
	// followed. UpErr or DownErr is not nil when By then reset the bytes
	// that still came for it: a socket closed with data arriving answers
	// with a reset (RFC 1122 §4.2.2.13), and that is still a close.
	Closed End = iota
	// Reset: By reset the connection, read as ECONNRESET or as a write's
	// EPIPE after one.
	Reset
	// Failed: another error on By's socket (a retransmission timeout, an
	// ICMP unreachable), or egressd's own (By Local: no pipe, no epoll).
	Failed
	// Idle: no byte moved either way for the idle timeout (By Local).
	Idle
	// Drained: Close ended it, as the gateway's drain does (By Local).
	Drained
)

// String names e as tests and logs print it.
func (e End) String() string {
	switch e {
	case Closed:
		return "closed"
	case Reset:
		return "reset"
	case Failed:
		return "failed"
	case Idle:
		return "idle"
	case Drained:
		return "drained"
	}
	return "end(" + strconv.Itoa(int(e)) + ")"
}

// isReset reports whether err, from a socket, is the peer's reset: read as
// ECONNRESET, or on a write as EPIPE once the reset was seen.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// ErrIdle ends a direction when neither direction moved a byte for the
// idle timeout.
var ErrIdle = errors.New("idle timeout")

// Relay copies client->upstream and upstream->client until both directions
// end. A clean EOF on one side is passed on as a half-close (CloseWrite) and
// the other direction keeps running; an error on either side, or idle time
// with no byte moved either way, closes both. A reset from one side is passed
// on to the other as a reset. Relay closes both connections before it
// returns. idle <= 0 disables the idle timeout.
func Relay(client, upstream net.Conn, idle time.Duration) Result {
	s := &session{client: client, upstream: upstream, idle: idle}
	s.touch()
	var up direction
	var wg sync.WaitGroup
	wg.Add(1)
	go s.copyUp(&wg, &up)
	var down direction
	s.run(&down, upstream, client, Upstream, Client)
	wg.Wait()
	client.Close()
	upstream.Close()
	r := Result{
		Up: up.n, Down: down.n,
		UpErr: up.err, DownErr: down.err,
		End: Closed, By: Side(s.closer.Load()),
	}
	if s.aborted.Load() {
		r.End, r.By = s.end, s.by
	}
	return r
}

// session is the state both directions of one connection share.
type session struct {
	client, upstream net.Conn
	idle             time.Duration
	last             atomic.Int64 // unix nanoseconds of the last byte moved
	aborted          atomic.Bool
	eofs             atomic.Int32  // directions that ended with a clean EOF
	closer           atomic.Uint32 // the Side whose EOF came first
	// end and by are how the connection ended, set by the abort that
	// ended it.
	end End
	by  Side
}

// direction is what one copy loop reports.
type direction struct {
	n   int64
	err error
}

// copyUp is the client->upstream half; a named function so it reads well in
// goroutine dumps.
func (s *session) copyUp(wg *sync.WaitGroup, d *direction) {
	defer wg.Done()
	s.run(d, s.client, s.upstream, Client, Upstream)
}

// run copies src (side from) to dst (side to), then passes on how the
// direction ended.
func (s *session) run(d *direction, src, dst net.Conn, from, to Side) {
	var atDst bool
	d.n, atDst, d.err = s.copy(src, dst)
	at := from
	if atDst {
		at = to
	}
	if d.err == nil {
		switch s.eofs.Add(1) {
		case 1:
			s.closer.Store(uint32(from))
		case 2:
			// Both sides have said all: Relay closes both now, and that
			// close is the FIN; a shutdown(2) first would be a wasted call.
			return
		}
		// Clean EOF: pass the half-close on and let the other direction run.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if err := cw.CloseWrite(); err == nil {
				return
			}
		}
	}
	s.abort(d.err, at)
}

// abort ends the whole connection on err, an error on side at's socket
// (nil: a half-close that could not be passed on). A reset from one side
// is passed on to the other as a reset (SO_LINGER 0) so the peer learns
// the truth. The first abort says how the connection ended; the others
// only see the sockets it closed.
func (s *session) abort(err error, at Side) {
	if !s.aborted.CompareAndSwap(false, true) {
		return
	}
	s.end, s.by = s.ending(err, at)
	if errors.Is(err, syscall.ECONNRESET) {
		other := s.client
		if at == Client {
			other = s.upstream
		}
		if l, ok := other.(interface{ SetLinger(int) error }); ok {
			l.SetLinger(0)
		}
	}
	s.client.Close()
	s.upstream.Close()
}

// ending says how err, on side at's socket, ended the connection.
func (s *session) ending(err error, at Side) (End, Side) {
	closer := Side(s.closer.Load())
	switch {
	case err == nil:
		return Closed, closer
	case errors.Is(err, ErrIdle):
		return Idle, Local
	case errors.Is(err, net.ErrClosed):
		return Drained, Local // Close, from another goroutine
	case isReset(err) && at == closer:
		return Closed, at // its socket's answer to bytes sent after its close
	case isReset(err):
		return Reset, at
	}
	return Failed, at
}

func (s *session) touch() { s.last.Store(time.Now().UnixNano()) }

// arm sets the deadlines this direction owns: the source's read side and the
// destination's write side.
func (s *session) arm(src, dst net.Conn, t time.Time) {
	src.SetReadDeadline(t)
	dst.SetWriteDeadline(t)
}

// wait decides what a failed read or write means: nil when it was only the
// idle deadline firing while the other direction still moves bytes (the
// deadline has been pushed out; go on), ErrIdle when the connection is idle,
// else err itself.
func (s *session) wait(err error, src, dst net.Conn) error {
	if !isTimeout(err) || s.idle <= 0 || s.aborted.Load() {
		return err
	}
	if s.expired(src, dst) {
		return ErrIdle
	}
	return nil
}

// expired is called when a direction's deadline fired. If the other
// direction moved bytes meanwhile the deadline is pushed out and the loop
// goes on; otherwise the connection is idle.
func (s *session) expired(src, dst net.Conn) bool {
	last := time.Unix(0, s.last.Load())
	until := last.Add(s.idle)
	if time.Now().Before(until) {
		s.arm(src, dst, until)
		return false
	}
	return true
}

// start arms the first deadlines; with no idle timeout it clears any a
// previous reader (the peek) left behind.
func (s *session) start(src, dst net.Conn) {
	var t time.Time
	if s.idle > 0 {
		t = time.Now().Add(s.idle)
	}
	s.arm(src, dst, t)
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// copy moves src -> dst through a pooled buffer. atDst reports that err
// came from a write to dst, not a read from src.
func (s *session) copy(src, dst net.Conn) (n int64, atDst bool, err error) {
	s.start(src, dst)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			s.touch()
			w, werr := writeFull(s, src, dst, buf[:n])
			total += int64(w)
			if werr != nil {
				return total, true, werr
			}
		}
		if rerr == nil {
			continue
		}
		if rerr == io.EOF {
			return total, false, nil
		}
		if rerr = s.wait(rerr, src, dst); rerr == nil {
			continue
		}
		return total, false, rerr
	}
}

func writeFull(s *session, src, dst net.Conn, b []byte) (int, error) {
	var done int
	for done < len(b) {
		n, err := dst.Write(b[done:])
		done += n
		if err == nil {
			continue
		}
		if err = s.wait(err, src, dst); err == nil {
			continue
		}
		return done, err
	}
	return done, nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
