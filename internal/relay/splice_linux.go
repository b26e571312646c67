package relay

import (
	"sync"

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
