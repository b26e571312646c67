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
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Result is what one relayed connection moved and how each direction ended.
type Result struct {
	Up   int64 // client -> upstream
	Down int64 // upstream -> client
	// UpErr and DownErr are nil when the direction ended with a clean EOF
	// from its source.
	UpErr, DownErr error
	// Idle is true when the connection was closed for being idle.
	Idle bool
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
	s.run(&down, upstream, client)
	wg.Wait()
	client.Close()
	upstream.Close()
	return Result{
		Up: up.n, Down: down.n,
		UpErr: up.err, DownErr: down.err,
		Idle: s.idleHit.Load(),
	}
}

// session is the state both directions of one connection share.
type session struct {
	client, upstream net.Conn
	idle             time.Duration
	last             atomic.Int64 // unix nanoseconds of the last byte moved
	aborted          atomic.Bool
	idleHit          atomic.Bool
	eofs             atomic.Int32 // directions that ended with a clean EOF
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
	s.run(d, s.client, s.upstream)
}

func (s *session) run(d *direction, src, dst net.Conn) {
	d.n, d.err = s.copy(src, dst)
	if d.err == nil {
		if s.eofs.Add(1) == 2 {
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
	s.abort(d.err, dst)
}

// abort ends the whole connection. A reset read from one side is passed on
// to the other as a reset (SO_LINGER 0) so the peer learns the truth.
func (s *session) abort(err error, dst net.Conn) {
	if !s.aborted.CompareAndSwap(false, true) {
		return
	}
	if errors.Is(err, syscall.ECONNRESET) {
		if l, ok := dst.(interface{ SetLinger(int) error }); ok {
			l.SetLinger(0)
		}
	}
	s.client.Close()
	s.upstream.Close()
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
	s.idleHit.Store(true)
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

// copy moves src -> dst through a pooled buffer.
func (s *session) copy(src, dst net.Conn) (int64, error) {
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
				return total, werr
			}
		}
		if rerr == nil {
			continue
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr = s.wait(rerr, src, dst); rerr == nil {
			continue
		}
		return total, rerr
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
