package relay

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A direction rests after a splice that moved a mid-sized batch: its
// source leaves the loop's interest for restFor, then is read whatever
// came meanwhile.
//
// Why: a loop that keeps up with a stream wakes for each TLS record a
// sender writes (16 KiB), and each wake-up of a sleeping CPU is an
// interrupt the sender's CPU sends it (a function-call IPI), which under a
// hypervisor costs that CPU microseconds: on a host where the sender sets
// the pace, the gateway that is quickest to react slows the stream down
// and spends the most CPU doing so (see docs/performance.md, "Resting
// between batches"). A rest lets records pile up in the socket while
// nothing waits on them; the loop then wakes on its own timer and moves
// them in one batch. Only the resting connection waits, and only after
// it moved restMin bytes in one go: the loop goes on serving every other
// connection's events at once, and a connection carrying small messages
// never rests. A batch of restMax or more says the stream is fast enough
// to fill batches by itself: no rest. A rest lasts restFor plus the
// kernel's timer slack (50 µs for a thread by default): under 0.1 ms, once
// per batch, for the resting connection alone.
const (
	restMin = 16 << 10              // a TLS record's payload
	restMax = 128 << 10             // half a pipe
	restFor = 50 * time.Microsecond // about what 16 KiB take at 3 Gbit/s
	// restPaced: a direction whose destination was full this recently
	// does not rest: its reader, not its sender, sets the pace, and a
	// rest would keep bytes from a reader waiting for them.
	restPaced = 2 * time.Millisecond
)

// rest is one resting direction of c and when its rest ends (monoNow).
type rest struct {
	c  *Conn
	d  *dir
	at int64
}

// restsTaken counts rests taken, for tests.
var restsTaken atomic.Int64

// rest starts a rest of c's direction d, whose batch has just been
// written, and reports whether it did: not on a kernel without
// epoll_pwait2 (the loop could not wake in time), nor if the source
// cannot leave the interest.
func (l *loop) rest(c *Conn, d *dir) bool {
	if l.noRest {
		return false
	}
	if !d.src.muted {
		if l.mute(d.src, true) != nil {
			return false
		}
		d.restMuted = true
	}
	d.resting = true
	l.rests = append(l.rests, rest{c, d, monoNow() + int64(restFor)})
	restsTaken.Add(1)
	return true
}

// wakeRests ends the rests that are due, in the order they began, and
// moves what each direction's source holds.
func (l *loop) wakeRests() {
	if len(l.rests) == 0 {
		return
	}
	now := monoNow()
	i := 0
	// Due, or further off than a rest lasts (which no rest is: a clock
	// that could go back must not hold every later rest behind it).
	for i < len(l.rests) && (l.rests[i].at <= now || l.rests[i].at-now > int64(restFor)) {
		i++
	}
	if i == 0 {
		return
	}
	// A pump below may rest again, appending to l.rests: the due ones
	// are taken out first.
	due := make([]rest, i)
	copy(due, l.rests[:i])
	n := copy(l.rests, l.rests[i:])
	clear(l.rests[n:])
	l.rests = l.rests[:n]
	l.now = time.Now().UnixNano()
	for _, r := range due {
		if !r.d.resting || r.c.closed {
			continue // ended meanwhile
		}
		r.d.resting = false
		r.d.src.readable = true
		r.c.pump()
	}
}

// monoBase and monoNow measure rests on the monotonic clock: a wall clock
// set back (an NTP step, a resumed VM) must not stall them.
var monoBase = time.Now()

func monoNow() int64 { return int64(time.Since(monoBase)) }

// canRest reports whether epoll_pwait2 (Linux 5.11) works on epfd: a rest
// needs a wait that ends within microseconds. A seccomp profile may refuse
// it (EPERM) as an old kernel does (ENOSYS); then no direction rests.
func canRest(epfd int) bool {
	var ev [1]unix.EpollEvent
	_, err := epollWait2Raw(epfd, ev[:], 0)
	return err == nil || err == unix.EINTR
}

// epollWait2Raw is epollWaitRaw with a timeout in nanoseconds
// (epoll_pwait2).
func epollWait2Raw(epfd int, events []unix.EpollEvent, ns int64) (int, error) {
	ts := unix.NsecToTimespec(ns)
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT2, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
	return int(r), errnoErr(e)
}
