package relay

import (
	"bytes"
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
	"golang.org/x/sys/unix"
)

// TestServerBytesBeforeStart has the server speak before the client joins
// the Conn: the loop only notes the upstream's readiness then, and no
// further event will come for it. The client's registration must make the
// loop pump those bytes.
func TestServerBytesBeforeStart(t *testing.T) {
	ls := loopsFor(t)
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
	defer server.Close()
	if _, err := server.Write([]byte("banner")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		rc.l.mu.Lock()
		noted := rc.upstream.readable
		rc.l.mu.Unlock()
		if noted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the loop never noted the server's bytes")
		}
	}
	client, cIn := testnet.Pair(t)
	defer client.Close()
	done := make(chan Result, 1)
	if err := rc.Attach(cIn, nil, time.Minute, func(r Result) { done <- r }); err != nil {
		t.Fatal(err)
	}
	rc.Start()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len("banner"))
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "banner" {
		t.Fatalf("client read %q, %v; want the server's banner", got, err)
	}
}

// TestCopyHeldWhileFull copies a small message to a destination whose
// socket is full: the bytes wait in the direction, counted only once
// written, the destination's EPOLLOUT joins its interest, and the source
// is muted; once the destination drains, the bytes go out after what
// filled it.
func TestCopyHeldWhileFull(t *testing.T) {
	l, err := newLoop()
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	w, src := tcpFDPair(t)
	dst, r := tcpFDPair(t)
	c := &Conn{l: l, done: func(Result) {}}
	c.client = side{c: c, fd: src, writable: true}
	c.upstream = side{c: c, fd: dst, writable: true}
	c.up = dir{src: &c.client, dst: &c.upstream}
	c.down = dir{src: &c.upstream, dst: &c.client}
	l.mu.Lock()
	err = l.register(&c.client)
	if err == nil {
		err = l.register(&c.upstream)
	}
	l.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	filled := 0
	for chunk := make([]byte, 64<<10); ; {
		n, err := writeNB(dst, chunk)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		filled += n
	}
	msg := []byte("a small message")
	if _, err := writeNB(w, msg); err != nil {
		t.Fatal(err)
	}
	pfd := []unix.PollFd{{Fd: int32(src), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); n != 1 || err != nil {
		t.Fatalf("the message did not arrive: %d, %v", n, err)
	}
	c.client.readable = true
	c.move(&c.up)
	if !bytes.Equal(c.up.head, msg) || c.up.n != 0 || c.upstream.writable {
		t.Fatalf("held %q, counted %d, writable %v; want the message held, uncounted", c.up.head, c.up.n, c.upstream.writable)
	}
	if !c.upstream.out || !c.client.muted || c.up.splicing {
		t.Fatalf("out %v, muted %v, splicing %v; want EPOLLOUT watched, the source muted, still copying", c.upstream.out, c.client.muted, c.up.splicing)
	}
	// Drain the far end, then let the direction run as the loop would on
	// the destination's EPOLLOUT.
	var got []byte
	buf := make([]byte, 64<<10)
	for deadline := time.Now().Add(5 * time.Second); len(got) < filled; {
		n, err := unix.Read(r, buf)
		if err == unix.EAGAIN {
			if time.Now().After(deadline) {
				t.Fatalf("drained %d of %d bytes", len(got), filled)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	c.upstream.writable = true
	c.move(&c.up)
	if len(c.up.head) != 0 || c.up.n != int64(len(msg)) || c.client.muted {
		t.Fatalf("held %q, counted %d, muted %v after the drain; want all written and counted, the source listened to", c.up.head, c.up.n, c.client.muted)
	}
	for deadline := time.Now().Add(5 * time.Second); len(got) < filled+len(msg); {
		n, err := unix.Read(r, buf)
		if err == unix.EAGAIN {
			if time.Now().After(deadline) {
				t.Fatal("the held message never arrived")
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got[filled:], msg) {
		t.Fatalf("after the fill: %q, want %q", got[filled:], msg)
	}
}
