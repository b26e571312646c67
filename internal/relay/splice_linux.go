package relay

import (
	"errors"
	"math"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// pipeSize is asked of every pooled pipe: bigger pipes move more bytes per
// splice(2) pair. A pipe whose size cannot be set is not used (see
// getPipe).
const pipeSize = 256 << 10

// maxIdlePipes bounds the pool: pipes beyond it are closed when returned,
// so a burst of busy connections does not pin fds forever.
const maxIdlePipes = 128

// pipeRetry is how long no pipe is made after making one failed (EMFILE,
// ENFILE, or a size refused): while the process is out of fds, every read
// that fills the loop's buffer would otherwise try again, a failed
// pipe2(2) each.
const pipeRetry = 100 * time.Millisecond

const spliceFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK

type pipe struct{ r, w int }

// pipes is a free list of pipes, and the count of those directions hold.
// It is not a sync.Pool: a pipe is two fds, and a sync.Pool would drop
// them at GC without closing them.
//
// The pipes in use and in the pool together stay within max. A direction
// keeps its pipe for as long as bytes wait in it, and a client that stops
// reading keeps them waiting until the idle timeout: unbounded, one
// source's stalled downloads would spend the process's open-files limit,
// past which every accept, dial and pipe fails (config.DeriveLimits
// counts two fds per connection). A direction that finds the budget spent
// copies through its loop's buffer instead (see Conn.move).
var pipes struct {
	sync.Mutex
	free []*pipe
	held int // taken by getPipe and not yet given back
	max  int // 0: not derived yet (see defaultMaxPipes)
	// retryAt is when a pipe may be made again after making one failed
	// (monoNow).
	retryAt int64
}

// errNoPipe is getPipe's error when the budget is spent.
var errNoPipe = errors.New("no pipe to spare")

// pipe2 makes a pipe; tests make it fail as a process out of fds would.
var pipe2 = unix.Pipe2

// setPipeSize asks for a pipe of pipeSize bytes; tests make it fail as an
// unprivileged user's would once the user's pipes pass
// fs.pipe-user-pages-soft (EPERM).
var setPipeSize = func(fd int) error {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_SETPIPE_SZ, pipeSize)
	return err
}

// getPipe takes a pipe from the pool, or makes one if the budget allows.
// It fails with errNoPipe when the budget is spent, a pipe could not be
// made just before, or the new pipe's size could not be set; or with
// pipe2's error.
func getPipe() (*pipe, error) {
	pipes.Lock()
	if pipes.held >= maxLocked() {
		pipes.Unlock()
		return nil, errNoPipe
	}
	if n := len(pipes.free); n > 0 {
		p := pipes.free[n-1]
		pipes.free = pipes.free[:n-1]
		pipes.held++
		pipes.Unlock()
		return p, nil
	}
	if pipes.retryAt != 0 && monoNow() < pipes.retryAt {
		pipes.Unlock()
		return nil, errNoPipe
	}
	pipes.held++ // its place, while it is made outside the lock
	pipes.Unlock()
	var fds [2]int
	if err := pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		madeNone()
		return nil, err
	}
	if err := setPipeSize(fds[1]); err != nil {
		// An unprivileged user past fs.pipe-user-pages-soft (egressd's
		// unit runs as a DynamicUser) gets pipes of 2 slots, and EPERM
		// for more: 8 KiB per splice pair, slower than the loop's
		// buffer, and pooled it would stay that small. The direction
		// copies instead, and asks again after pipeRetry, when pipes
		// given back may have brought the user under the limit.
		unix.Close(fds[0])
		unix.Close(fds[1])
		madeNone()
		return nil, errNoPipe
	}
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// madeNone gives back the place getPipe took for a pipe it could not
// make, and holds off making another for pipeRetry.
func madeNone() {
	pipes.Lock()
	pipes.held--
	pipes.retryAt = monoNow() + int64(pipeRetry)
	pipes.Unlock()
}

// putPipe returns an empty pipe to the pool.
func putPipe(p *pipe) {
	pipes.Lock()
	pipes.held--
	if len(pipes.free) < maxIdlePipes && pipes.held+len(pipes.free) < pipes.max {
		pipes.free = append(pipes.free, p)
		pipes.Unlock()
		return
	}
	pipes.Unlock()
	p.close()
}

// dropPipe closes a pipe getPipe gave that still holds bytes: they must
// never reach another connection.
func dropPipe(p *pipe) {
	pipes.Lock()
	pipes.held--
	pipes.Unlock()
	p.close()
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// setMaxPipes bounds the splice pipes (two fds each) that relayed
// connections hold at once, in use and idle in the pool, to n; n <= 0
// derives the bound from the open-files limit in force now, as is done at
// first use when setMaxPipes was never called. A direction that wants a
// pipe past the bound copies through its loop's buffer instead, a little
// slower, and asks again at its next read that fills it. It may be called
// at any time: pipes over a lowered bound are closed as they are given
// back.
func setMaxPipes(n int) {
	if n <= 0 {
		n = defaultMaxPipes()
	}
	pipes.Lock()
	pipes.max = n
	var extra []*pipe
	if over := pipes.held + len(pipes.free) - n; over > 0 {
		k := max(0, len(pipes.free)-over)
		extra = pipes.free[k:]
		pipes.free = pipes.free[:k:k]
	}
	pipes.Unlock()
	for _, p := range extra {
		p.close()
	}
}

// maxPipes is the bound on pipes in force (see setMaxPipes).
func maxPipes() int {
	pipes.Lock()
	defer pipes.Unlock()
	return maxLocked()
}

// maxLocked is the bound on pipes, derived at first use unless
// setMaxPipes set it; pipes' lock is held.
func maxLocked() int {
	if pipes.max == 0 {
		pipes.max = defaultMaxPipes()
	}
	return pipes.max
}

// defaultMaxPipes is the bound for the open-files limit in force (see
// pipesFor); a limit that cannot be read is taken for 1024, the usual
// soft limit.
func defaultMaxPipes() int {
	noFile := uint64(1024)
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil {
		noFile = lim.Cur
	}
	return pipesFor(noFile)
}

// pipesFor is the bound on pipes for a process allowed noFile open files:
// a fortieth of them, so that pipes take at most a twentieth of the fds.
// config.DeriveLimits keeps at least a tenth out of connections' reach,
// for everything that is not a relayed connection's two sockets: the
// pipes may take half of that reserve, and no more.
func pipesFor(noFile uint64) int {
	return int(min(max(1, noFile/40), math.MaxInt32))
}

// IdlePipes reports how many pipes the pool holds; tests use it to check
// that idle connections give theirs back.
func IdlePipes() int {
	pipes.Lock()
	defer pipes.Unlock()
	return len(pipes.free)
}
