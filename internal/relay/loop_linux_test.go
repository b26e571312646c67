package relay

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestStaleEventDropped checks that an event carrying an earlier
// registration's number is not taken for the socket that now has the same
// fd: a dial in progress must not be woken by the previous socket's event.
func TestStaleEventDropped(t *testing.T) {
	l, err := newLoop()
	if err != nil {
		t.Fatal(err)
	}
	defer l.file.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	c := &Conn{l: l, connected: make(chan struct{})}
	c.upstream = side{c: c, fd: fds[0]}
	c.client.fd = -1
	l.mu.Lock()
	l.gen = 41 // the fd's previous socket was registration 41
	err = l.register(&c.upstream)
	l.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	defer c.closeSockets()
	stale := unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fds[0]), Pad: 41}
	l.handle([]unix.EpollEvent{stale})
	if c.upstream.writable || c.connected == nil {
		t.Fatal("a stale event (registration 41) was applied to registration 42")
	}
	current := unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fds[0]), Pad: c.upstream.gen}
	l.handle([]unix.EpollEvent{current})
	if !c.upstream.writable || c.connected != nil {
		t.Fatal("the socket's own event was not applied")
	}
}
