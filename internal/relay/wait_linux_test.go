//go:build linux

package relay

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAwaitReadable checks the four ends of a wait for first bytes
// (bytes, the peer's close, the context, the deadline), that each calls then once,
// and that the socket leaves the loop's set: a second wait on it, which
// adds it again, works.
func TestAwaitReadable(t *testing.T) {
	ls := loopsFor(t)
	wait := func(fd int, d time.Duration) chan bool {
		got := make(chan bool, 2)
		ls.AwaitReadable(context.Background(), fd, time.Now().Add(d), func(readable bool) { got <- readable })
		return got
	}
	result := func(t *testing.T, got chan bool, want bool) {
		t.Helper()
		select {
		case r := <-got:
			if r != want {
				t.Fatalf("then(%v), want then(%v)", r, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("then was never called")
		}
		select {
		case r := <-got:
			t.Fatalf("then called a second time, with %v", r)
		case <-time.After(50 * time.Millisecond):
		}
	}

	t.Run("bytes later", func(t *testing.T) {
		a, b := tcpFDPair(t)
		got := wait(b, time.Minute)
		time.Sleep(20 * time.Millisecond)
		writeNB(a, []byte("hello"))
		result(t, got, true)
		// Out of the set: added again, and reported at once, since the
		// bytes are still queued.
		result(t, wait(b, time.Minute), true)
	})
	t.Run("peer closes", func(t *testing.T) {
		a, b := tcpFDPair(t)
		got := wait(b, time.Minute)
		unix.Shutdown(a, unix.SHUT_WR)
		result(t, got, true)
	})
	t.Run("context done", func(t *testing.T) {
		a, b := tcpFDPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		got := make(chan bool, 2)
		ls.AwaitReadable(ctx, b, time.Now().Add(time.Hour), func(readable bool) { got <- readable })
		cancel()
		result(t, got, false)
		writeNB(a, []byte("late"))
		result(t, wait(b, time.Minute), true)
	})
	t.Run("silent", func(t *testing.T) {
		a, b := tcpFDPair(t)
		result(t, wait(b, 100*time.Millisecond), false)
		// Out of the set after the deadline too: added again, it reports
		// bytes that come.
		writeNB(a, []byte("late"))
		result(t, wait(b, time.Minute), true)
	})
}
