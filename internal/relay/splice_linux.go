package relay

import (
	"errors"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// pipeSize is asked of every pooled pipe: bigger pipes move more bytes per
// splice(2) pair. The kernel may grant less (fs.pipe-max-size); that is fine.
const pipeSize = 256 << 10

// maxIdlePipes bounds the pool: pipes beyond it are closed when returned,
// so a burst of busy connections does not pin fds forever.
const maxIdlePipes = 128

const spliceFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK

type pipe struct{ r, w int }

// pipes is a free list of pipes. It is not a sync.Pool: a pipe is two fds,
// and a sync.Pool would drop them at GC without closing them.
var pipes struct {
	sync.Mutex
	free []*pipe
}

func getPipe() (*pipe, error) {
	pipes.Lock()
	if n := len(pipes.free); n > 0 {
		p := pipes.free[n-1]
		pipes.free = pipes.free[:n-1]
		pipes.Unlock()
		return p, nil
	}
	pipes.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// putPipe returns an empty pipe to the pool.
func putPipe(p *pipe) {
	pipes.Lock()
	if len(pipes.free) < maxIdlePipes {
		pipes.free = append(pipes.free, p)
		pipes.Unlock()
		return
	}
	pipes.Unlock()
	p.close()
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// IdlePipes reports how many pipes the pool holds; tests use it to check
// that idle connections give theirs back.
func IdlePipes() int {
	pipes.Lock()
	defer pipes.Unlock()
	return len(pipes.free)
}

// splice moves src -> dst with splice(2). The pipe is held only while the
// source has bytes: when a read finds nothing and the pipe is empty, the
// pipe goes back to the pool before the goroutine parks.
func (s *session) splice(src, dst *net.TCPConn) (int64, error) {
	srcRaw, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRaw, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	s.start(src, dst)
	var (
		total   int64
		p       *pipe
		pending int // bytes in p not yet written to dst
	)
	defer func() {
		if p == nil {
			return
		}
		if pending == 0 {
			putPipe(p)
		} else {
			p.close() // bytes stuck in it: never hand them to another connection
		}
	}()
	// The callbacks are made once per direction, not once per chunk: a
	// closure passed to RawConn escapes, so each literal in the loop would
	// be a heap allocation per chunk.
	var (
		n          int64
		serr, werr error
	)
	fill := func(fd uintptr) bool {
		for {
			if p == nil {
				if p, serr = getPipe(); serr != nil {
					return true
				}
			}
			n, serr = unix.Splice(int(fd), nil, p.w, nil, pipeSize, spliceFlags)
			switch serr {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				putPipe(p) // empty: nothing was read into it
				p = nil
				return false
			}
			return true
		}
	}
	drain := func(fd uintptr) bool {
		for pending > 0 {
			m, e := unix.Splice(p.r, nil, int(fd), nil, pending, spliceFlags)
			switch e {
			case nil:
				pending -= int(m)
				total += m
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				werr = e
				return true
			}
		}
		return true
	}
	for {
		n, serr = 0, nil
		rerr := srcRaw.Read(fill)
		if rerr != nil {
			if rerr = s.wait(rerr, src, dst); rerr == nil {
				continue
			}
			return total, rerr
		}
		if serr != nil {
			return total, opError("read", src, serr)
		}
		if n == 0 {
			return total, nil // EOF
		}
		s.touch()
		pending = int(n)
		for pending > 0 {
			werr = nil
			err := dstRaw.Write(drain)
			if err != nil {
				if err = s.wait(err, src, dst); err == nil {
					continue
				}
				return total, err
			}
			if werr != nil {
				return total, opError("write", dst, werr)
			}
		}
		s.touch()
	}
}

func opError(op string, c net.Conn, err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		err = errno
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
