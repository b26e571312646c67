package relay

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
	"golang.org/x/sys/unix"
)

// countWatch watches every client read (WatchOn), so that its direction
// stays in the loop's buffer, scanned, however full its reads; first runs
// at its first call, on the loop's goroutine.
type countWatch struct {
	calls atomic.Int64
	first func()
}

func (w *countWatch) Client(b []byte) ([]byte, WatchState, error) {
	if w.calls.Add(1) == 1 && w.first != nil {
		w.first()
	}
	return b, WatchOn, nil
}
func (w *countWatch) Server([]byte) WatchState { return WatchOff }
func (w *countWatch) Expired() error           { return &Refusal{Why: "expired"} }
func (w *countWatch) Release()                 {}

// TestBusyDirectionYields: a client whose socket always has a full buffer
// of watched bytes waiting, with an upstream that takes all it is given,
// must not hold its loop. A's client socket is filled before A relays, so
// that every read of its turn is full whatever the timing; while its
// first read is scanned, B's client sends a byte, and B's Watch must see
// it within a few of A's reads, not once A's socket is empty. A's bytes
// must still arrive whole and in order.
func TestBusyDirectionYields(t *testing.T) {
	ls := NewLoops(1) // A and B on one loop
	t.Cleanup(func() { ls.Close() })

	// B: a watched connection whose first client read says when B was
	// served, counted in A's reads.
	aWatch := &countWatch{}
	var bServedAt atomic.Int64
	bServed := make(chan struct{})
	bWatch := &countWatch{first: func() {
		bServedAt.Store(aWatch.calls.Load())
		close(bServed)
	}}
	b := newWorldWith(t, ls, time.Minute, func(c *Conn) { c.Watch(bWatch, time.Minute) })

	// A, set up by hand: its client's bytes must be queued before Start.
	const total = 4 << 20
	data := make([]byte, total)
	rand.Read(data)
	want := sha256.Sum256(data)
	client, cIn := testnet.Pair(t)
	bufSize(t, cIn, unix.SO_RCVBUF, total)
	bufSize(t, client, unix.SO_SNDBUF, total)
	ln := testnet.Listen(t)
	defer ln.Close()
	rc, err := ls.Dial(context.Background(), netip.MustParseAddrPort(ln.Addr().String()), 0, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	sent := make(chan error, 1)
	go func() {
		_, err := client.Write(data)
		if err == nil {
			err = client.CloseWrite()
		}
		sent <- err
	}()
	// Every full read of A's turn must come from what is queued now: at
	// least 64 reads' worth, or the test proves nothing.
	queued := waitQueued(t, cIn, total)
	if queued < 64*copyMax {
		t.Skipf("only %d bytes queued on the client socket; the test needs %d", queued, 64*copyMax)
	}
	aWatch.first = func() {
		if _, err := b.client.Write([]byte("x")); err != nil {
			t.Error(err)
		}
	}
	aDone := make(chan Result, 1)
	if err := rc.Attach(cIn, nil, time.Minute, func(r Result) { aDone <- r }); err != nil {
		t.Fatal(err)
	}
	rc.Watch(aWatch, time.Minute)
	got := make(chan [sha256.Size]byte, 1)
	go func() {
		h := sha256.New()
		io.Copy(h, server)
		got <- [sha256.Size]byte(h.Sum(nil))
	}()
	rc.Start()

	select {
	case <-bServed:
	case <-time.After(30 * time.Second):
		t.Fatal("B was never served")
	}
	t.Logf("B served after %d of A's reads", bServedAt.Load())
	if n := bServedAt.Load(); n > 8 {
		t.Errorf("B was served after %d of A's reads (%d bytes queued), want at most 8", n, queued)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if h := <-got; h != want {
		t.Error("the upstream got other bytes than A's client sent")
	}
	server.Close()
	if r := <-aDone; r.Up != total {
		t.Errorf("A's Result = %+v, want %d bytes up", r, total)
	}
}

// bufSize sets a socket buffer's size, forced past the sysctl's bound
// where the test may (as root).
func bufSize(t *testing.T, c *net.TCPConn, opt, n int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	force := map[int]int{unix.SO_RCVBUF: unix.SO_RCVBUFFORCE, unix.SO_SNDBUF: unix.SO_SNDBUFFORCE}[opt]
	rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, force, n) != nil {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, n)
		}
	})
}

// waitQueued waits until c's socket has want bytes queued to read, or
// stops growing for a while, and returns how many it has.
func waitQueued(t *testing.T, c *net.TCPConn, want int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	queued, still := 0, 0
	for deadline := time.Now().Add(10 * time.Second); queued < want && still < 50 && time.Now().Before(deadline); {
		time.Sleep(2 * time.Millisecond)
		n := queued
		rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if n == queued {
			still++
		} else {
			queued, still = n, 0
		}
	}
	return queued
}
