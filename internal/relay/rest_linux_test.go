package relay

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
	"time"
)

// TestRestsDeliverEverything: a server that writes 32 KiB batches with
// pauses between them (as a sender of TLS records that the loop keeps up
// with) makes the direction rest, and every byte arrives in order,
// including a small tail after the last rest, and then the server's FIN.
// The upload direction, carrying small messages meanwhile, never waits
// for the download's rests.
func TestRestsDeliverEverything(t *testing.T) {
	w := newWorld(t, loopsFor(t), time.Minute)
	if w.rc.l.noRest {
		t.Skip("no epoll_pwait2 here: no direction rests")
	}
	var down []byte
	for range 64 {
		b := make([]byte, 32<<10)
		rand.Read(b)
		down = append(down, b...)
	}
	tail := []byte("the tail, after the rests")
	before := restsTaken.Load()
	sent := make(chan error, 1)
	go func() {
		for b := down; len(b) > 0; b = b[32<<10:] {
			if _, err := w.server.Write(b[:32<<10]); err != nil {
				sent <- err
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
		time.Sleep(10 * time.Millisecond) // the tail comes alone
		if _, err := w.server.Write(tail); err != nil {
			sent <- err
			return
		}
		sent <- w.server.CloseWrite()
	}()
	// Small messages up while the download rests: each echoed by the
	// server's side below only once all of it has arrived.
	for i := range 20 {
		msg := []byte{byte(i)}
		if _, err := w.client.Write(msg); err != nil {
			t.Fatal(err)
		}
		w.server.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, 1)
		if _, err := io.ReadFull(w.server, got); err != nil || got[0] != byte(i) {
			t.Fatalf("upload message %d: %v %v", i, got, err)
		}
	}
	w.client.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(w.client)
	if err != nil {
		t.Fatalf("after %d bytes: %v", len(got), err)
	}
	if want := append(bytes.Clone(down), tail...); !bytes.Equal(got, want) {
		t.Fatalf("client got %d bytes, want the %d sent, in order", len(got), len(want))
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if restsTaken.Load() == before {
		t.Error("32 KiB batches with pauses took no rest")
	}
	w.client.CloseWrite()
	if r := w.result(t); r.Down != int64(len(down)+len(tail)) || r.DownErr != nil || r.UpErr != nil {
		t.Errorf("Result = %+v, want %d bytes down and clean EOFs", r, len(down)+len(tail))
	}
}

// TestSmallMessagesNeverRest: an exchange of messages under restMin takes
// no rest.
func TestSmallMessagesNeverRest(t *testing.T) {
	w := newWorld(t, loopsFor(t), time.Minute)
	before := restsTaken.Load()
	msg := bytes.Repeat([]byte("m"), restMin-1)
	got := make([]byte, len(msg))
	for range 20 {
		if _, err := w.server.Write(msg); err != nil {
			t.Fatal(err)
		}
		w.client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(w.client, got); err != nil {
			t.Fatal(err)
		}
	}
	if n := restsTaken.Load() - before; n != 0 {
		t.Errorf("%d rests for messages of %d bytes, want none", n, len(msg))
	}
}

// TestRestBehindStaleEntry: a rest whose end lies further off than a rest
// lasts (as a wall clock set back would have made one) is taken as due and
// holds no later rest behind it.
func TestRestBehindStaleEntry(t *testing.T) {
	var l loop
	a, b := &Conn{closed: true}, &Conn{closed: true} // ended: taken, not pumped
	now := monoNow()
	l.rests = []rest{{a, &a.up, now + int64(time.Hour)}, {b, &b.up, now - 1}}
	l.wakeRests()
	if len(l.rests) != 0 {
		t.Errorf("after wakeRests, %d rests left behind one an hour off, want none", len(l.rests))
	}
	l.rests = []rest{{a, &a.up, now + int64(restFor)}}
	l.wakeRests()
	if len(l.rests) != 1 {
		t.Errorf("a rest not yet due was taken")
	}
}
