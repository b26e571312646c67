package relay

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A Listener is a listening socket whose connections the loops accept
// themselves, and hand to a function on their own goroutine. Accepted
// through the runtime, each connection cost the runtime's poller a
// registration, a name look-up and a wake-up of a thread of its own, and
// a hand-over to a set-up goroutine; on a loop, a handler that can decide
// at once (gateway: a whole hello, a name already resolved) relays the
// connection without any of them. The socket is in every loop's epoll
// set, not the runtime's poller, level-triggered and with
// EPOLLEXCLUSIVE, so that a new connection wakes one loop, not all, and
// the set-ups spread over the loops as the relays do. A batch accepts at
// most acceptBatch connections, so that a flood of connections cannot
// starve a loop's relays.
type Listener struct {
	// mu is held (shared) around each accept4 and (exclusively) by Close,
	// so that the socket is never closed, and its number reused, under an
	// accept.
	mu     sync.RWMutex
	closed bool
	loops  []*loop
	fd     int
	handle func(fd int, peer netip.AddrPort)
	fail   func(err error, backoff time.Duration)

	paused atomic.Bool // accepting paused for a backoff (see pause)
	wmu    sync.Mutex
	wait   time.Duration // under wmu
}

// acceptBatch bounds the connections a loop accepts per event.
const acceptBatch = 32

// Listen takes ln's socket out of the runtime's poller (ln is closed; a
// duplicate of its socket lives on) and has the loops accept on it:
// handle runs on a loop's goroutine with each accepted socket,
// non-blocking, which it then owns, and must not wait for anything. fail
// is told of accept errors other than a client that left (EMFILE,
// ENFILE, ENOBUFS...), with the backoff accepting then pauses for,
// doubling from 5 ms to 1 s, back to 5 ms after an accept succeeds.
func (ls *Loops) Listen(ln *net.TCPListener, handle func(fd int, peer netip.AddrPort), fail func(err error, backoff time.Duration)) (*Listener, error) {
	if _, err := ls.pick(); err != nil {
		return nil, err
	}
	raw, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var derr error
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("fcntl", derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	// Accepted sockets inherit TCP_NODELAY from the listening one: relayed
	// writes go out as they come, as on a socket Go accepts, without a
	// setsockopt per connection.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("setsockopt", err)
	}
	ln.Close()
	x := &Listener{loops: ls.loops, fd: fd, handle: handle, fail: fail}
	for i, l := range x.loops {
		if err := l.addListener(x); err != nil {
			for _, l := range x.loops[:i] {
				l.removeListener(x)
			}
			unix.Close(fd)
			return nil, err
		}
	}
	return x, nil
}

// addListener puts x in the loop's epoll set.
func (l *loop) addListener(x *Listener) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.shut {
		return net.ErrClosed
	}
	if l.listeners == nil {
		l.listeners = make(map[int]*Listener)
	}
	l.listeners[x.fd] = x
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(x.fd), Pad: listenerTag}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, x.fd, &ev); err != nil {
		delete(l.listeners, x.fd)
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// removeListener takes x out of the loop's epoll set.
func (l *loop) removeListener(x *Listener) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.listeners[x.fd] == x {
		delete(l.listeners, x.fd)
	}
	if !l.shut {
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, x.fd, nil)
	}
}

// listenerTag is a listening socket's registration number in its epoll
// events; a side's is never 0 (see register).
const listenerTag = 0

// Close stops accepting and closes the socket; connections in its
// accept queue are reset. A second Close does nothing.
func (x *Listener) Close() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return nil
	}
	x.closed = true
	for _, l := range x.loops {
		l.removeListener(x)
	}
	unix.Close(x.fd)
	return nil
}

// Control calls f with the listening socket, unless it is closed.
func (x *Listener) Control(f func(fd int) error) error {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.closed {
		return net.ErrClosed
	}
	return f(x.fd)
}

// accept accepts up to acceptBatch connections on the listener whose
// event came in, handing each to its handler. Another loop may accept on
// the same socket at the same time: that is what the socket's queue is
// for.
func (l *loop) accept(fd int) {
	l.mu.Lock()
	x := l.listeners[fd]
	l.mu.Unlock()
	if x == nil {
		return // a listener closed since the event was reported
	}
	for range acceptBatch {
		if x.paused.Load() {
			return
		}
		x.mu.RLock()
		if x.closed {
			x.mu.RUnlock()
			return
		}
		nfd, peer, err := accept4NB(x.fd)
		x.mu.RUnlock()
		switch err {
		case nil:
			x.handle(nfd, peer)
			continue
		case unix.EINTR, unix.ECONNABORTED:
			continue
		case unix.EAGAIN:
			x.wmu.Lock()
			x.wait = 0 // the queue was emptied: the next error starts at 5 ms
			x.wmu.Unlock()
			return
		}
		if backoff, first := x.pause(); first && x.fail != nil {
			x.fail(os.NewSyscallError("accept4", err), backoff)
		}
		return
	}
}

// pause takes the listener out of the loops' interest for a backoff: at
// EMFILE the pending connection stays queued and, level-triggered, would
// wake the loops at once for ever. (An EPOLLEXCLUSIVE registration cannot
// be modified, only removed and added again.) first is false when another
// loop paused it already.
func (x *Listener) pause() (backoff time.Duration, first bool) {
	x.wmu.Lock()
	defer x.wmu.Unlock()
	if !x.paused.CompareAndSwap(false, true) {
		return x.wait, false
	}
	x.wait = min(max(2*x.wait, 5*time.Millisecond), time.Second)
	x.mu.RLock()
	if !x.closed {
		for _, l := range x.loops {
			l.removeListener(x)
		}
	}
	x.mu.RUnlock()
	time.AfterFunc(x.wait, func() {
		x.mu.RLock()
		defer x.mu.RUnlock()
		if x.closed {
			return
		}
		for _, l := range x.loops {
			l.addListener(x) // a loop that ended refuses: nothing to do
		}
		x.paused.Store(false)
	})
	return x.wait, true
}

// accept4NB is accept4(2) on a non-blocking listening socket, made raw
// (see raw_linux.go), with the peer's address read from the kernel's
// sockaddr without an allocation.
func accept4NB(fd int) (int, netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	return int(r), rawAddrPort(&rsa), nil
}

func rawAddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// connectRaw is connect(2) on a non-blocking socket, made raw.
func connectRaw(fd int, sa unix.Sockaddr) error {
	var ptr unsafe.Pointer
	var n uintptr
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		rsa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: sa.Addr}
		putPort(&rsa.Port, sa.Port)
		ptr, n = unsafe.Pointer(&rsa), unix.SizeofSockaddrInet4
	case *unix.SockaddrInet6:
		rsa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: sa.Addr, Scope_id: sa.ZoneId}
		putPort(&rsa.Port, sa.Port)
		ptr, n = unsafe.Pointer(&rsa), unix.SizeofSockaddrInet6
	default:
		return unix.Connect(fd, sa)
	}
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(ptr), n)
	return errnoErr(e)
}

// putPort stores port in a raw sockaddr's port field, in network order.
func putPort(field *uint16, port int) {
	p := (*[2]byte)(unsafe.Pointer(field))
	p[0], p[1] = byte(port>>8), byte(port)
}
