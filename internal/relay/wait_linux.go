package relay

import (
	"context"
	"time"

	"golang.org/x/sys/unix"
)

// readWait is a socket a loop watches for its first bytes (AwaitReadable).
type readWait struct {
	then func(readable bool)
	giveUps
}

// waitTag is a waiting socket's registration number in its epoll events;
// a side's is never waitTag (see register).
const waitTag = -1

// AwaitReadable has a loop call then(true), on its goroutine, once fd has
// bytes to read or its peer has closed or reset; or then(false) at
// deadline or once ctx is done, on another goroutine: exactly once, with
// fd out of the loop's set again, so that it can be relayed or handed to
// the runtime's poller. fd is a socket a Listener accepted and not
// registered anywhere.
//
// A Listener's handler waits this way, without blocking its loop, for a
// client that connected before it sent anything: a transparent listener
// does not defer accepts, since server-first clients (SSH, SMTP) send
// nothing until the server speaks, so its clients' first bytes are often
// still on the way when the loop accepts.
func (ls *Loops) AwaitReadable(ctx context.Context, fd int, deadline time.Time, then func(readable bool)) {
	l, err := ls.pick()
	if err != nil {
		then(false)
		return
	}
	w := &readWait{then: then}
	l.mu.Lock()
	if l.shut {
		l.mu.Unlock()
		then(false)
		return
	}
	if l.waits == nil {
		l.waits = make(map[int]*readWait)
	}
	// Level-triggered and one-shot: bytes already queued report at once,
	// and one report is all the wait needs.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(fd), Pad: waitTag}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.mu.Unlock()
		then(false)
		return
	}
	l.waits[fd] = w
	w.giveUps = armGiveUps(ctx, time.Until(deadline), func(error) { l.endWait(fd, w, false) })
	l.mu.Unlock()
}

// endWait ends fd's wait w, unless it has ended already: the event and
// the timer race, and the first takes it.
func (l *loop) endWait(fd int, w *readWait, readable bool) {
	l.mu.Lock()
	if l.waits[fd] != w {
		l.mu.Unlock()
		return
	}
	delete(l.waits, fd)
	if !l.shut {
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	}
	l.mu.Unlock()
	w.stop()
	w.then(readable)
}

// waited handles a waiting socket's event; a stale one, of a wait the
// timer ended, finds none.
func (l *loop) waited(fd int) {
	l.mu.Lock()
	w := l.waits[fd]
	l.mu.Unlock()
	if w != nil {
		l.endWait(fd, w, true)
	}
}
