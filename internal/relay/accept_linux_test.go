package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/internal/testnet"
)

// TestListenAccepts checks a Listener: the loop accepts, hands over a
// non-blocking socket and the client's address, the runtime's listener is
// closed, and after Close nothing is accepted.
func TestListenAccepts(t *testing.T) {
	ls := loopsFor(t)
	ln := testnet.Listen(t)
	addr := ln.Addr().String()
	type accepted struct {
		fd   int
		peer netip.AddrPort
	}
	got := make(chan accepted, 64)
	x, err := ls.Listen(ln, func(fd int, peer netip.AddrPort) { got <- accepted{fd, peer} }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ln.Accept(); err == nil {
		t.Error("the runtime's listener still accepts")
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case a := <-got:
		defer unix.Close(a.fd)
		if want := c.LocalAddr().(*net.TCPAddr).AddrPort(); a.peer != want {
			t.Errorf("peer = %v, want %v", a.peer, want)
		}
		if fl, err := unix.FcntlInt(uintptr(a.fd), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
			t.Errorf("accepted socket flags %#x (err %v), want O_NONBLOCK", fl, err)
		}
		if v, err := unix.GetsockoptInt(a.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
			t.Errorf("accepted socket TCP_NODELAY = %d (err %v), want on, as Go sets it", v, err)
		}
		c.Write([]byte("hi"))
		var b [2]byte
		for deadline := time.Now().Add(5 * time.Second); ; {
			n, _ := unix.Read(a.fd, b[:])
			if n == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the accepted socket is not the client's")
			}
			time.Sleep(time.Millisecond)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing accepted")
	}
	// Many at once: every one is accepted once, by one loop or another.
	var many []net.Conn
	for range 50 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		many = append(many, c)
	}
	for i := range 50 {
		select {
		case a := <-got:
			unix.Close(a.fd)
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of 50 connections accepted", i)
		}
	}
	for _, c := range many {
		c.Close()
	}
	x.Close()
	x.Close() // a second Close does nothing
	if c2, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c2.Close()
		select {
		case a := <-got:
			unix.Close(a.fd)
			t.Error("accepted after Close")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestDialAsync checks the three ends of an asynchronous dial: connected
// (at once, on loopback, the first bytes written by the dial and not
// again by AttachFD), refused, and a Conn usable like Dial's.
func TestDialAsync(t *testing.T) {
	ls := loopsFor(t)
	ln := testnet.Listen(t)
	dst := netip.MustParseAddrPort(ln.Addr().String())
	res, then := dialResults()
	ls.DialAsync(context.Background(), dst, 0, 5*time.Second, []byte("hello"), then)
	r := waitDial(t, res, 10*time.Second, "a dial to a listener")
	if r.err != nil {
		t.Fatalf("dial to a listener: %v", r.err)
	}
	server, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	client, cIn := testnet.Pair(t)
	cf, _ := cIn.File()
	cIn.Close()
	cfd, _ := unix.Dup(int(cf.Fd()))
	cf.Close()
	unix.SetNonblock(cfd, true)
	done := make(chan Result, 1)
	if err := r.c.AttachFD(cfd, netip.AddrPort{}, []byte("hello"), time.Minute, func(res Result) { done <- res }); err != nil {
		t.Fatal(err)
	}
	if r.c.sent != 5 {
		t.Errorf("the dial wrote %d of the 5 first bytes, want all: the connect ended inside the call", r.c.sent)
	}
	r.c.Start()
	client.Close()
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(server); err != nil || string(b) != "hello" {
		t.Fatalf("server read %q, %v; want the first bytes once, then EOF", b, err)
	}
	server.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end")
	}

	// Refused: nobody listens on the port any more.
	ln.Close()
	ls.DialAsync(context.Background(), dst, 0, 5*time.Second, []byte("hello"), then)
	if r := waitDial(t, res, 10*time.Second, "a refused dial"); r.err == nil {
		r.c.Abandon()
		t.Fatal("dial to a closed port succeeded")
	}
}

// dialResult is an asynchronous dial's end, as its then is given it.
type dialResult struct {
	c   *Conn
	err error
}

// dialResults returns a then for DialAsync and where its ends arrive.
func dialResults() (chan dialResult, func(*Conn, error)) {
	res := make(chan dialResult, 2)
	return res, func(c *Conn, err error) { res <- dialResult{c, err} }
}

// waitDial returns the next dial's end, failing the test if none comes
// within wait.
func waitDial(t *testing.T, res chan dialResult, wait time.Duration, what string) dialResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(wait):
		t.Fatalf("%s never ended", what)
		return dialResult{}
	}
}

// TestDialAsyncWaits checks the asynchronous dial when the connect does
// not end inside the call: a listener whose accept queue is full drops
// the SYN, so the connect is under way until the timer or the context
// ends it, or until the queue has room again and the SYN's
// retransmission is answered, which the loop reports.
func TestDialAsyncWaits(t *testing.T) {
	ls := loopsFor(t)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	unix.SetNonblock(fd, true)
	sa, _ := unix.Getsockname(fd)
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	var fill []net.Conn
	defer func() {
		for _, c := range fill {
			c.Close()
		}
	}()
	for range 16 {
		c, err := net.DialTimeout("tcp", dst.String(), 200*time.Millisecond)
		if err != nil {
			break // the queue is full: SYNs are dropped
		}
		fill = append(fill, c)
	}
	res, then := dialResults()

	ls.DialAsync(context.Background(), dst, 0, 300*time.Millisecond, []byte("hello"), then)
	if r := waitDial(t, res, 10*time.Second, "a dial timed by its timer"); r.err == nil {
		r.c.Abandon()
		t.Fatal("a dial into a full accept queue connected")
	}

	// A context done ends it too, long before its timeout, with the
	// context's cause: a gateway shutting down does not wait for a
	// connect timeout.
	stopping := errors.New("shutting down")
	ctx, cancel := context.WithCancelCause(context.Background())
	ls.DialAsync(ctx, dst, 0, time.Hour, []byte("hello"), then)
	cancel(stopping)
	if r := waitDial(t, res, 10*time.Second, "a dial whose context was cancelled"); !errors.Is(r.err, stopping) {
		t.Fatalf("dial whose context was cancelled ended with %v, want its cause", r.err)
	}

	ls.DialAsync(context.Background(), dst, 0, 10*time.Second, []byte("hello"), then)
	for { // make room: the SYN's retransmission is answered
		nfd, _, err := unix.Accept4(fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			break
		}
		defer unix.Close(nfd)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() { // keep room in the queue
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC); err == nil {
				unix.Close(nfd)
			}
		}
	}()
	r := waitDial(t, res, 15*time.Second, "a dial the loop must see connect")
	if r.err != nil {
		t.Fatalf("dial after the queue had room: %v", r.err)
	}
	if r.c.sent != 0 {
		t.Errorf("the dial wrote %d first bytes on a socket still connecting, want none (Attach writes them)", r.c.sent)
	}
	r.c.Abandon()
}

// TestDialAsyncIPv6 checks the raw connect's IPv6 sockaddr.
func TestDialAsyncIPv6(t *testing.T) {
	ln, err := net.ListenTCP("tcp6", &net.TCPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	loopsFor(t).DialAsync(context.Background(), ln.Addr().(*net.TCPAddr).AddrPort(), 0, 5*time.Second, nil, func(c *Conn, err error) {
		if c != nil {
			c.Abandon()
		}
		done <- err
	})
	if err := <-done; err != nil {
		t.Fatalf("dial [::1]: %v", err)
	}
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
