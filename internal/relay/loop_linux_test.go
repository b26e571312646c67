package relay

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
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
	defer l.close()
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

// TestStalledReader relays a download to a client that reads nothing for
// a while, so that its socket fills and the upstream is muted, then reads
// it all. With closeEarly the server has sent everything and closed by
// then: the EOF that arrived while muted must still come after every
// byte. Without, the server waits for the client to have every byte before
// it closes, so the relay must have listened to the upstream again.
func TestStalledReader(t *testing.T) {
	for _, closeEarly := range []bool{true, false} {
		t.Run(map[bool]string{true: "server-closed", false: "server-open"}[closeEarly], func(t *testing.T) {
			w := newWorld(t, loopsFor(t), time.Minute)
			down := make([]byte, 32<<20)
			rand.Read(down)
			before := mutes.Load()
			received := make(chan struct{})
			sent := make(chan error, 1)
			go func() {
				_, err := w.server.Write(down)
				if !closeEarly {
					<-received
				}
				if err == nil {
					err = w.server.Close()
				}
				sent <- err
			}()
			// Wait until the relay has stopped listening to the upstream:
			// the client's socket and the pipe are full.
			for deadline := time.Now().Add(20 * time.Second); mutes.Load() == before; {
				if time.Now().After(deadline) {
					t.Fatal("the upstream was never muted while the client read nothing")
				}
				time.Sleep(5 * time.Millisecond)
			}
			w.client.SetReadDeadline(time.Now().Add(30 * time.Second))
			got := make([]byte, len(down))
			n, err := io.ReadFull(w.client, got)
			if err != nil {
				t.Fatalf("after %d of %d bytes: %v", n, len(down), err)
			}
			if !bytes.Equal(got, down) {
				t.Fatal("client got different bytes")
			}
			close(received)
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			if n, err := w.client.Read(got[:1]); n != 0 || err != io.EOF {
				t.Fatalf("after the bytes: %d, %v; want EOF", n, err)
			}
			w.client.CloseWrite()
			if r := w.result(t); r.Down != int64(len(down)) || r.DownErr != nil {
				t.Errorf("Result = %+v, want %d bytes down and a clean EOF", r, len(down))
			}
		})
	}
}

// TestSockaddrZone checks an IPv6 zone becomes connect's zone id, named
// or numeric.
func TestSockaddrZone(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skip("no lo interface")
	}
	for _, tc := range []struct {
		addr string
		want uint32
	}{
		{"[fe80::1%lo]:443", uint32(lo.Index)},
		{"[fe80::1%7]:443", 7},
		{"[fe80::1]:443", 0},
	} {
		family, sa := sockaddr(netip.MustParseAddrPort(tc.addr))
		sa6, ok := sa.(*unix.SockaddrInet6)
		if family != unix.AF_INET6 || !ok || sa6.ZoneId != tc.want || sa6.Port != 443 {
			t.Errorf("%s: family %d, %+v; want AF_INET6, zone %d, port 443", tc.addr, family, sa, tc.want)
		}
	}
}

// TestFirstBytesNeedNoMute hands the loop the upstream's first bytes (a
// server that speaks at once) before it has handled the new client
// socket's first EPOLLOUT, as happens when both events arrive in one
// batch. The bytes must go straight to the client: taking the client for
// unwritable would mute the upstream and unmute it one event later, two
// epoll_ctl calls per connection for nothing.
func TestFirstBytesNeedNoMute(t *testing.T) {
	l, err := newLoop()
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	client, cIn := testnet.Pair(t)
	server, uOut := testnet.Pair(t)
	defer client.Close()
	defer server.Close()
	c := &Conn{l: l, done: func(Result) {}}
	c.client.c, c.upstream.c = c, c
	c.up = dir{src: &c.client, dst: &c.upstream}
	c.down = dir{src: &c.upstream, dst: &c.client}
	if err := c.upstream.detach(uOut); err != nil {
		t.Fatal(err)
	}
	if err := c.client.detach(cIn); err != nil {
		t.Fatal(err)
	}
	defer c.closeSockets()
	l.mu.Lock()
	err = l.register(&c.upstream)
	l.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	c.upstream.markWritable() // as Dial does once connected
	if _, err := server.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	pfd := []unix.PollFd{{Fd: int32(c.upstream.fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); n != 1 || err != nil {
		t.Fatalf("the server's bytes did not arrive: %d, %v", n, err)
	}
	if err := l.add(c); err != nil {
		t.Fatal(err)
	}
	before := mutes.Load()
	l.handle([]unix.EpollEvent{{Events: unix.EPOLLIN | unix.EPOLLOUT, Fd: int32(c.upstream.fd), Pad: c.upstream.gen}})
	if mutes.Load() != before || c.upstream.muted {
		t.Error("the upstream was muted before the client's first EPOLLOUT was handled")
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 5)
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "hello" {
		t.Fatalf("client read %q, %v", got, err)
	}
}

// TestLoopParksWhenQuiet relays across the loop's two ways of waiting: a
// loop that has seen no event for a while must park in the runtime's
// poller (holding no P, so that an idle gateway costs nothing), and the
// next bytes must wake it. A collection is run while the loop is busy,
// waiting in the kernel holding its P: the stop of the world must reach
// it (a hang here fails the test by its timeout). With busy polling
// (SetBusyPoll) the same must hold: the loop spins between polls instead
// of sleeping, but a quiet one still parks, and the stop of the world
// still reaches it.
func TestLoopParksWhenQuiet(t *testing.T) {
	for _, spin := range []time.Duration{0, 50 * time.Microsecond, time.Millisecond} {
		t.Run("busy_poll "+spin.String(), func(t *testing.T) {
			ls := loopsFor(t)
			ls.SetBusyPoll(spin)
			testLoopParksWhenQuiet(t, ls)
		})
	}
}

// TestBusyPollCatchesEvents checks that a loop told to busy-poll does:
// echoes whose answers come within the spin are caught by a poll, not
// by a wake-up, and a loop not told to never polls.
func TestBusyPollCatchesEvents(t *testing.T) {
	for _, spin := range []time.Duration{0, time.Millisecond} {
		t.Run("busy_poll "+spin.String(), func(t *testing.T) {
			ls := loopsFor(t)
			ls.SetBusyPoll(spin)
			w := newWorld(t, ls, time.Minute)
			before := polled.Load()
			msg := []byte("ping")
			b := make([]byte, len(msg))
			for range 2000 {
				if _, err := w.client.Write(msg); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(w.server, b); err != nil {
					t.Fatal(err)
				}
				if _, err := w.server.Write(b); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(w.client, b); err != nil {
					t.Fatal(err)
				}
				if spin > 0 && polled.Load() > before {
					return
				}
			}
			if got := polled.Load() - before; spin > 0 || got != 0 {
				t.Errorf("with busy_poll %s, %d of 2000 echoes' events were caught by polling", spin, got)
			}
		})
	}
}

func testLoopParksWhenQuiet(t *testing.T, ls *Loops) {
	w := newWorld(t, ls, time.Minute)
	l := w.rc.l
	echo := func(msg string) {
		t.Helper()
		if _, err := w.client.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(w.server, b); err != nil || string(b) != msg {
			t.Fatalf("server read %q, %v; want %q", b, err, msg)
		}
		if _, err := w.server.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(w.client, b); err != nil || string(b) != msg {
			t.Fatalf("client read %q, %v; want %q", b, err, msg)
		}
	}
	for i := range 3 {
		echo("busy")
		runtime.GC()
		deadline := time.Now().Add(10 * time.Second)
		for !l.parked.Load() {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the loop never parked after its traffic stopped", i)
			}
			time.Sleep(time.Millisecond)
		}
		echo("woken from parked")
	}
}

// TestLoopThatCannotParkStaysBusy gives a loop a parking set that refuses
// it (an fd that is not an epoll set): the loop must keep relaying,
// waiting in the kernel, instead of ending and stranding its
// connections, and its idle sweep must still close a quiet connection.
func TestLoopThatCannotParkStaysBusy(t *testing.T) {
	l, err := newLoop()
	if err != nil {
		t.Fatal(err)
	}
	l.pfd = l.efd // EPOLL_CTL_MOD on an eventfd fails with EINVAL
	if l.listen(unix.EPOLLIN) == nil {
		t.Fatal("listen on a non-epoll fd succeeded; the test would prove nothing")
	}
	ls := &Loops{loops: []*loop{l}}
	ls.start.Do(func() {
		ls.wg.Add(1)
		go ls.runLoop(l)
	})
	t.Cleanup(func() { ls.Close() })

	w := newWorld(t, ls, 300*time.Millisecond)
	for i := range 3 {
		msg := []byte("still relayed")
		if _, err := w.client.Write(msg); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, len(msg))
		w.server.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(w.server, b); err != nil {
			t.Fatalf("round %d: the loop did not relay: %v", i, err)
		}
		time.Sleep(20 * time.Millisecond) // several quiet spells: each tries to park
		if l.parked.Load() {
			t.Fatal("the loop parked on a set it could not listen in")
		}
	}
	if r := w.result(t); r.End != Idle {
		t.Errorf("Result = %+v, want the idle sweep to close it", r)
	}
}
