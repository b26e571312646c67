package relay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/internal/listener"
)

// Dial connects a new socket to dst and returns it as the upstream half of
// a Conn on one of the loops; Attach then adds the client, and Start
// relays.
//
// The socket never passes through the runtime's poller: it is made
// non-blocking, registered with a loop at once, and its connect completes
// there. A dial through net.Dialer and a hand-over costs eight more system
// calls (the poller's epoll_ctl pair, getsockname, getpeername, the dup and
// the close of the original), which on a new-connection-bound gateway is a
// visible share of the CPU.
//
// mark, when not 0, is set as SO_MARK (needs CAP_NET_ADMIN). first is
// what the caller will pass to Attach, the bytes to send at once (nil
// when the server speaks first): when the connect ends inside the call,
// as on loopback, they are written there, and that write is what tells
// the connect has ended (see startDial); Attach writes the rest. first is
// not kept. The error of a failed dial is a *net.OpError, as net.Dialer's.
func (ls *Loops) Dial(ctx context.Context, dst netip.AddrPort, mark uint32, timeout time.Duration, first []byte) (*Conn, error) {
	c, wait, err := ls.startDial(dst, mark, first, false)
	if err != nil || wait == nil {
		return c, err
	}
	timer := time.NewTimer(timeout)
	select {
	case <-wait:
		timer.Stop()
	case <-timer.C:
		c.Abandon()
		return nil, dialError(dst, os.ErrDeadlineExceeded)
	case <-ctx.Done():
		timer.Stop()
		c.Abandon()
		return nil, dialError(dst, context.Cause(ctx))
	}
	if err := c.connectResult(); err != nil {
		c.Abandon()
		return nil, dialError(dst, err)
	}
	return c, nil
}

// DialAsync is Dial for a loop's own goroutine (a Listener's handler),
// which must never wait for a connect: then is called with the connected
// Conn, or with the dial's error (the socket already closed), exactly
// once. It runs at once when the connect finished inside the call (as on
// loopback), on the loop when the connect's end is reported, or on
// another goroutine when timeout passes first or ctx is done (the error is
// then context.Cause(ctx)'s).
func (ls *Loops) DialAsync(ctx context.Context, dst netip.AddrPort, mark uint32, timeout time.Duration, first []byte, then func(*Conn, error)) {
	c, wait, err := ls.startDial(dst, mark, first, true)
	switch {
	case err != nil:
		then(nil, err)
		return
	case wait == nil:
		then(c, nil)
		return
	}
	// The loop reports a connect's end under l.mu, and takes then with
	// it: set under l.mu too, exactly one of the loop, the timer and ctx
	// takes it, unless the connect ended between startDial and here.
	c.l.mu.Lock()
	ended := c.connected == nil
	if !ended {
		c.waiting = &dialWait{then: then}
		c.waiting.giveUps = armGiveUps(ctx, timeout, func(err error) {
			if f := c.takeThen(); f != nil {
				c.waiting.stop()
				c.Abandon()
				f(nil, dialError(dst, err))
			}
		})
	}
	c.l.mu.Unlock()
	if ended {
		c.connectedAsync(then)
	}
}

// dialWait is an asynchronous dial that did not connect inside the call:
// its continuation, until the loop, the timer or the context takes it
// (under l.mu), and what ends it if the loop does not first.
type dialWait struct {
	then func(*Conn, error)
	giveUps
}

// giveUps ends a wait on a loop that the loop does not end first (an
// asynchronous dial, a wait for first bytes): a timer at its deadline and
// a hook on its context.
type giveUps struct {
	timer *time.Timer
	ctx   func() bool // stops the context's AfterFunc
}

// armGiveUps starts both: giveUp is called with os.ErrDeadlineExceeded
// after d, or with context.Cause(ctx) once ctx is done, perhaps both;
// the caller makes sure only the first counts.
func armGiveUps(ctx context.Context, d time.Duration, giveUp func(error)) giveUps {
	return giveUps{
		timer: time.AfterFunc(d, func() { giveUp(os.ErrDeadlineExceeded) }),
		ctx:   context.AfterFunc(ctx, func() { giveUp(context.Cause(ctx)) }),
	}
}

func (g *giveUps) stop() {
	g.timer.Stop()
	g.ctx()
}

// takeThen takes an asynchronous dial's continuation, nil if the loop, the
// timer or the context already took it.
func (c *Conn) takeThen() func(*Conn, error) {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if c.waiting == nil {
		return nil
	}
	f := c.waiting.then
	c.waiting.then = nil
	return f
}

// connected ends an asynchronous dial whose connect the loop saw end
// (on the loop's goroutine, l.mu not held).
func (c *Conn) connectedAsync(f func(*Conn, error)) {
	if c.waiting != nil {
		c.waiting.stop()
	}
	if err := c.connectResult(); err != nil {
		c.Abandon()
		f(nil, dialError(c.upstream.peer, err))
		return
	}
	f(c, nil)
}

// connectResult is the outcome of a connect the loop saw end.
func (c *Conn) connectResult() error {
	if !c.connectErr {
		return nil // readiness came without an error
	}
	soerr, err := unix.GetsockoptInt(c.upstream.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && soerr != 0 {
		return os.NewSyscallError("connect", unix.Errno(soerr))
	}
	if err != nil {
		return os.NewSyscallError("getsockopt", err)
	}
	// A hang-up with no error pending: the server accepted and reset or
	// closed at once. The relay will see it; the dial itself succeeded.
	return nil
}

func dialError(dst netip.AddrPort, err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(dst), Err: err}
}

// startDial makes the socket and starts its connect; wait, nil when the
// connect has finished (successfully) already, is closed when the loop
// sees it end (c.connected, read here, before the loop can clear it). raw makes the connect
// without telling the scheduler, for a loop's own goroutine: on loopback
// the handshake runs inside the call, and a call made the usual way that
// outlives a sysmon tick hands the loop's P to another thread.
func (ls *Loops) startDial(dst netip.AddrPort, mark uint32, first []byte, raw bool) (c *Conn, wait chan struct{}, err error) {
	l, err := ls.pick()
	if err != nil {
		return nil, nil, err
	}
	family, sa := sockaddr(dst)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, dialError(dst, os.NewSyscallError("socket", err))
	}
	if mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
			unix.Close(fd)
			return nil, nil, dialError(dst, fmt.Errorf("set SO_MARK %#x (needs CAP_NET_ADMIN): %w", mark, err))
		}
	}
	// As net.Dialer does: relayed writes go out as they come.
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if len(first) > 0 {
		// The handshake's last ACK waits for the first bytes and goes
		// out with them: one segment less for both ends to process.
		// Never when the server speaks first: its accept would wait for
		// the delayed-ACK timer.
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUICKACK, 0)
	}

	c = &Conn{l: l}
	c.client.c, c.upstream.c = c, c
	c.client.fd, c.upstream.fd = -1, fd
	c.upstream.peer = dst
	c.up = dir{src: &c.client, dst: &c.upstream}
	c.down = dir{src: &c.upstream, dst: &c.client}
	if raw {
		err = connectRaw(fd, sa)
	} else {
		err = unix.Connect(fd, sa)
	}
	if err != nil && err != unix.EINPROGRESS && err != unix.EINTR {
		unix.Close(fd)
		return nil, nil, dialError(dst, os.NewSyscallError("connect", err))
	}
	// Connected at once, or, on loopback and other local paths, the
	// handshake has run inside connect, and the socket joins the loop
	// without EPOLLOUT (see interest). Otherwise EPOLLOUT tells the loop
	// that the connect has ended. With first bytes to send, writing them
	// is how to find out (a socket still connecting refuses a write with
	// EAGAIN, one whose connect failed with the connect's error); without,
	// one poll(2) instead of parking until the loop reports it.
	var done bool
	if len(first) > 0 {
		n, werr := writeFirst(fd, first)
		c.sent = int32(n) // a write takes at most the socket's send buffer
		switch {
		case werr == nil:
			done = true
		case werr == unix.EAGAIN:
			done = err == nil // connected, with a full send buffer: never on a new socket
		default:
			unix.Close(fd)
			return nil, nil, dialError(dst, os.NewSyscallError("connect", werr))
		}
	} else {
		done = err == nil || established(fd)
	}
	if !done {
		// Made only for a connect still under way: the loop cannot see c
		// before register, and most local dials never need it.
		wait = make(chan struct{})
		c.connected = wait
	}
	c.upstream.writable, c.upstream.out = done, !done
	l.mu.Lock()
	rerr := l.register(&c.upstream)
	l.mu.Unlock()
	if rerr != nil {
		unix.Close(fd)
		return nil, nil, dialError(dst, rerr)
	}
	return c, wait, nil
}

// writeFirst writes what of first a new socket takes now. EAGAIN, before
// any byte, means the connect is under way.
func writeFirst(fd int, first []byte) (int, error) {
	for {
		n, err := writeNB(fd, first)
		if err != unix.EINTR {
			return max(n, 0), err
		}
	}
}

// established reports whether fd's connect has already succeeded.
func established(fd int) bool {
	pfd := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(pfd[:], 0)
	return err == nil && n == 1 && pfd[0].Revents&(unix.POLLOUT|unix.POLLERR|unix.POLLHUP) == unix.POLLOUT
}

func sockaddr(ap netip.AddrPort) (int, unix.Sockaddr) {
	a := ap.Addr()
	if a.Is4() || a.Is4In6() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.Unmap().As4()}
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
	if z := a.Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		} else if i, err := strconv.ParseUint(z, 10, 32); err == nil {
			sa.ZoneId = uint32(i) // a numeric zone, as in fe80::1%2
		}
	}
	return unix.AF_INET6, sa
}

// UpstreamLocal is the dialled upstream socket's own address (a SOCKS5
// reply's BND.ADDR); the zero AddrPort if it cannot be read.
func (c *Conn) UpstreamLocal() netip.AddrPort { return localAddr(c.upstream.fd) }

// localAddr is the socket's own address, invalid if it has none.
func localAddr(fd int) netip.AddrPort {
	ap, _ := listener.LocalAddrFD(fd)
	return ap
}

// Abandon closes a dialled upstream that will not be relayed.
func (c *Conn) Abandon() {
	c.l.forget(c)
	c.closeSockets()
}

// AttachFD is Attach for a client socket that never was a net.Conn: fd,
// non-blocking, accepted by a Listener, from peer. The Conn owns fd from
// here, whatever happens.
func (c *Conn) AttachFD(fd int, peer netip.AddrPort, first []byte, idle time.Duration, done func(Result)) error {
	c.client.fd, c.client.peer = fd, peer
	return c.attach(first, idle, done)
}

// Attach makes client the other half of a dialled Conn: first (the bytes
// already read from the client, as given to Dial) is written to the
// upstream, but for what Dial wrote, then client
// is taken out of the runtime's poller as New does. Start relays. On error
// the upstream is closed; client is closed too once it was taken.
func (c *Conn) Attach(client *net.TCPConn, first []byte, idle time.Duration, done func(Result)) error {
	if err := c.attach(first, idle, done); err != nil {
		return err
	}
	if err := c.client.detach(client); err != nil {
		c.Abandon()
		return fmt.Errorf("taking over the client socket: %w", err)
	}
	return nil
}

// attach writes first to the upstream, but for what the dial wrote
// already, and sets what Start needs; on error the Conn is abandoned
// (both its sockets closed).
func (c *Conn) attach(first []byte, idle time.Duration, done func(Result)) error {
	c.idle, c.done = int64(idle), done
	first = first[min(int(c.sent), len(first)):]
	for len(first) > 0 {
		n, err := writeNB(c.upstream.fd, first)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			// The send buffer is full (a big hello on a small buffer):
			// the loop writes the rest before any spliced byte.
			c.up.head = append([]byte(nil), first...)
			break
		}
		if err != nil {
			c.Abandon()
			return c.upstream.opError("write", err)
		}
		first = first[n:]
	}
	return nil
}

// Adopt makes upstream, a connection already established through the Go
// runtime (net.Dialer), the upstream half of a Conn, as Dial would have
// made it: Attach then adds the client, and Start relays. The gateway
// dials this way when it must talk to the server before relaying, as
// while it waits for a server-first client's late first bytes. upstream
// is closed (the Conn holds a duplicate of its socket) whatever happens.
func (ls *Loops) Adopt(upstream *net.TCPConn) (*Conn, error) {
	l, err := ls.pick()
	if err != nil {
		upstream.Close()
		return nil, err
	}
	c := &Conn{l: l}
	c.client.c, c.upstream.c = c, c
	c.client.fd = -1
	if ap, ok := upstream.RemoteAddr().(*net.TCPAddr); ok {
		c.upstream.peer = ap.AddrPort()
	}
	c.up = dir{src: &c.client, dst: &c.upstream}
	c.down = dir{src: &c.upstream, dst: &c.client}
	if err := c.upstream.detach(upstream); err != nil {
		c.upstream.closeFD()
		return nil, fmt.Errorf("taking over the upstream socket: %w", err)
	}
	l.mu.Lock()
	err = l.register(&c.upstream)
	c.upstream.writable = err == nil
	l.mu.Unlock()
	if err != nil {
		c.upstream.closeFD()
		return nil, err
	}
	return c, nil
}
