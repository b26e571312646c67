package relay

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The relay's calls on its non-blocking fds (the loop's, Attach's first
// write, Close's shutdowns) are made raw, without telling the scheduler
// that the goroutine enters a system call. Every one of them is on a
// non-blocking socket, pipe or epoll fd, so none waits for a peer; but on
// loopback a splice or close runs the peer's TCP receive path inline and
// can take tens of microseconds. Made the usual way, such a call outlives
// a sysmon tick (20 µs): sysmon takes the P away from the loop's thread
// and wakes another thread to run it, and when the call returns the loop's
// thread must sleep and hand its goroutine over: with one P (a proxy
// pinned to one CPU), a pair of context switches per long call, in futex
// waits and sysmon wake-ups. A raw call keeps the P; the cost is
// that a stop-the-world waits for the call to return. A close can also
// sleep briefly on the epoll set's lock while another thread registers a
// socket with the same loop.
//
// connect is not among them (Dial uses unix.Connect): with the ephemeral
// ports nearly used up the kernel's port search can take milliseconds,
// during which a raw call would stall the whole process.
//
// None of these may be used on a blocking fd. The one call here that
// waits on purpose is epollWaitRaw, a busy loop's wait for events (at most
// quietSpell, see loop.busy): a stop of the world reaches it by the
// preemption signal, which ends the wait with EINTR, or, with
// GODEBUG=asyncpreemptoff=1, waits for it, at most that long.

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// spliceNB is unix.Splice without offsets, made raw.
func spliceNB(in, out int, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), spliceFlags)
	return int(r), errnoErr(e)
}

// writeNB is unix.Write on a non-blocking fd, made raw.
func writeNB(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(r), errnoErr(e)
}

// closeNB closes fd. A socket's close never waits here: the loop's sockets
// are non-blocking and a lingering close is always SO_LINGER 0 (a reset).
func closeNB(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// shutdownNB is unix.Shutdown, made raw.
func shutdownNB(fd, how int) error {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return errnoErr(e)
}

// epollWaitRaw is unix.EpollWait, made raw: with msec > 0 it blocks
// holding the P; with 0 it only polls.
func epollWaitRaw(epfd int, events []unix.EpollEvent, msec int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	return int(r), errnoErr(e)
}

// readNB is unix.Read on a non-blocking fd, made raw.
func readNB(fd int, b []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(r), errnoErr(e)
}
