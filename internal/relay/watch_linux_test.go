package relay

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"syscall"
	"testing"
	"time"
)

// lineWatch holds the client's bytes until a line ends: "ok" lets them
// and the rest of the connection through, anything else is refused with
// the reply "no\n". It is done with the server after its first bytes.
type lineWatch struct {
	held        []byte
	serverReads int
	endOnServer bool // the server's first bytes end the whole watch
	released    int  // Release calls
}

func (w *lineWatch) Client(b []byte) ([]byte, WatchState, error) {
	w.held = append(w.held, b...)
	i := bytes.IndexByte(w.held, '\n')
	switch {
	case i < 0:
		return nil, WatchHolding, nil
	case string(w.held[:i]) != "ok":
		return nil, WatchOff, &Refusal{Why: "line " + string(w.held[:i]), Reply: []byte("no\n")}
	}
	return w.held, WatchOff, nil
}

func (w *lineWatch) Server([]byte) WatchState {
	w.serverReads++
	if w.endOnServer {
		return WatchEnded
	}
	return WatchOff
}
func (w *lineWatch) Expired() error { return &Refusal{Why: "no line in time"} }
func (w *lineWatch) Release()       { w.released++ }

// watchedWorld is a world whose connection lineWatch watches, with hold.
func watchedWorld(t *testing.T, hold time.Duration) (*world, *lineWatch) {
	lw := &lineWatch{}
	w := newWorldWith(t, loopsFor(t), time.Minute, func(c *Conn) { c.Watch(lw, hold) })
	return w, lw
}

// TestWatchHoldsThenLetsGo: the client's bytes reach the server only once
// the Watch lets them go, whole and in order, however they came; after
// that the connection relays a bulk transfer each way (spliced) intact.
func TestWatchHoldsThenLetsGo(t *testing.T) {
	w, lw := watchedWorld(t, time.Minute)
	if _, err := w.client.Write([]byte("o")); err != nil {
		t.Fatal(err)
	}
	w.server.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := w.server.Read(make([]byte, 8)); n > 0 || !errors.Is(err, syscall.EAGAIN) && !isTimeout(err) {
		t.Fatalf("the server read %d bytes (%v) of a line not yet whole", n, err)
	}
	w.client.Write([]byte("k\nand more"))
	w.server.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len("ok\nand more"))
	if _, err := io.ReadFull(w.server, got); err != nil || string(got) != "ok\nand more" {
		t.Fatalf("server got %q, %v", got, err)
	}
	bulk := make([]byte, 4<<20)
	rand.Read(bulk)
	go func() { w.server.Write(bulk); w.server.CloseWrite() }()
	go func() { w.client.Write(bulk); w.client.CloseWrite() }()
	w.client.SetReadDeadline(time.Now().Add(30 * time.Second))
	down, err := io.ReadAll(w.client)
	if err != nil || !bytes.Equal(down, bulk) {
		t.Fatalf("client got %d bytes (%v), want the %d sent", len(down), err, len(bulk))
	}
	up, err := io.ReadAll(w.server)
	if err != nil || !bytes.Equal(up, bulk) {
		t.Fatalf("server got %d more bytes (%v), want %d", len(up), err, len(bulk))
	}
	if r := w.result(t); r.End != Closed || r.Up != int64(len("ok\nand more")+len(bulk)) || r.Down != int64(len(bulk)) {
		t.Errorf("Result = %+v", r)
	}
	if w.rc.watch != nil || lw.released != 1 {
		t.Errorf("the Conn holds its Watch after both sides were let go (%v), released %d times", w.rc.watch != nil, lw.released)
	}
}

// TestWatchRefuses: a refused line never reaches the server, which is
// reset; the client reads the reply, then the end; the Result says why.
func TestWatchRefuses(t *testing.T) {
	w, lw := watchedWorld(t, time.Minute)
	w.client.Write([]byte("bad"))
	time.Sleep(20 * time.Millisecond) // the line in two reads, the first held
	w.client.Write([]byte("\nok\n"))
	w.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, _ := io.ReadAll(w.client)
	if string(reply) != "no\n" {
		t.Errorf("client read %q, want the reply", reply)
	}
	w.server.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(w.server)
	if len(got) > 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("server read %q, %v; want nothing and a reset", got, err)
	}
	if r := w.result(t); r.End != Refused || r.By != Client || r.Why != "line bad" || r.Up != 0 {
		t.Errorf("Result = %+v", r)
	}
	if lw.released != 1 {
		t.Errorf("the refusing Watch was released %d times, want once", lw.released)
	}
}

// TestWatchHoldExpires: held bytes that never complete end the connection
// after the hold time, though the idle timeout is far off, with the
// Watch's reason.
func TestWatchHoldExpires(t *testing.T) {
	w, _ := watchedWorld(t, 100*time.Millisecond)
	// Trickled bytes do not stretch the hold: the connection ends while
	// the client still trickles, 20 times the hold long.
	ended := false
	for range 50 {
		if _, err := w.client.Write([]byte("o")); err != nil {
			ended = true
			break
		}
		time.Sleep(40 * time.Millisecond)
	}
	if !ended {
		t.Error("a client trickling its held bytes kept the connection for 2 s with a hold of 100 ms")
	}
	if r := w.result(t); r.End != Refused || r.Why != "no line in time" {
		t.Errorf("Result = %+v", r)
	}
}

// TestWatchEndedByServer: a Watch that the server's first bytes end lets
// the client's next bytes through unread (not held for a line), without a
// read of the client's to end it first.
func TestWatchEndedByServer(t *testing.T) {
	lw := &lineWatch{endOnServer: true}
	w := newWorldWith(t, loopsFor(t), time.Minute, func(c *Conn) { c.Watch(lw, time.Minute) })
	w.server.Write([]byte("answer"))
	w.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(w.client, make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	w.client.Write([]byte("no line end"))
	w.server.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len("no line end"))
	if _, err := io.ReadFull(w.server, got); err != nil {
		t.Fatalf("the client's bytes after the watch ended: %v (held?)", err)
	}
	w.client.Close()
	w.server.Close()
	w.result(t)
	if lw.held != nil || w.rc.watch != nil {
		t.Errorf("the watch saw the client's bytes (%q) or stayed on the Conn", lw.held)
	}
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// pokeWatch holds the client's bytes until its decision, made on another
// goroutine, arrives; then a Poke lets them go (or refuses them).
type pokeWatch struct {
	decided chan bool // the decision, sent by the test
	held    []byte
	asked   chan struct{}
}

func (w *pokeWatch) Client(b []byte) ([]byte, WatchState, error) {
	w.held = append(w.held, b...)
	select {
	case ok := <-w.decided:
		if !ok {
			return nil, WatchOff, &Refusal{Why: "decided no"}
		}
		return w.held, WatchOff, nil
	default:
	}
	select {
	case w.asked <- struct{}{}:
	default:
	}
	return nil, WatchHolding, nil
}
func (w *pokeWatch) Server([]byte) WatchState { return WatchOff }
func (w *pokeWatch) Expired() error           { return &Refusal{Why: "undecided"} }
func (w *pokeWatch) Release()                 {}

// TestWatchPoke: a Watch that holds the client's bytes while a decision
// is made off the loop lets them go when Poke asks it again, with no
// more bytes from the client; a Poke to a Conn that has ended is ignored.
func TestWatchPoke(t *testing.T) {
	for _, allow := range []bool{true, false} {
		pw := &pokeWatch{decided: make(chan bool, 1), asked: make(chan struct{}, 1)}
		w := newWorldWith(t, loopsFor(t), time.Minute, func(c *Conn) { c.Watch(pw, time.Minute) })
		w.client.Write([]byte("held"))
		<-pw.asked
		pw.decided <- allow
		w.rc.Poke()
		if !allow {
			if r := w.result(t); r.End != Refused || r.Why != "decided no" {
				t.Fatalf("refused after a poke: Result = %+v", r)
			}
			w.rc.Poke() // ended: nothing to do
			continue
		}
		got := make([]byte, 4)
		w.server.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(w.server, got); err != nil || string(got) != "held" {
			t.Fatalf("server got %q, %v after the poke", got, err)
		}
		w.client.Write([]byte(" then more"))
		more := make([]byte, len(" then more"))
		if _, err := io.ReadFull(w.server, more); err != nil || string(more) != " then more" {
			t.Fatalf("server got %q, %v", more, err)
		}
	}
}

// TestWatchPokeAfterHalfClose: a client that half-closes while its bytes
// are held (a TLS client's hello sent with its FIN, its decision waiting
// for a look-up) must have them reach the server, followed by its FIN,
// once the decision lets them go, and must still read the server's
// answer. Passing the FIN on at once had the server read EOF before the
// bytes it must come after, and the held bytes then failed to write.
func TestWatchPokeAfterHalfClose(t *testing.T) {
	pw := &pokeWatch{decided: make(chan bool, 1), asked: make(chan struct{}, 1)}
	w := newWorldWith(t, loopsFor(t), time.Minute, func(c *Conn) { c.Watch(pw, time.Minute) })
	w.client.Write([]byte("held"))
	<-pw.asked
	if err := w.client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// Nothing reaches the server while the bytes are held: not even the
	// FIN that must follow them.
	w.server.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := w.server.Read(make([]byte, 1)); !isTimeout(err) {
		t.Fatalf("server read %d bytes, %v while the client's bytes were held; want nothing", n, err)
	}
	pw.decided <- true
	w.rc.Poke()
	w.server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(w.server); err != nil || string(got) != "held" {
		t.Fatalf("server got %q, %v after the poke; want the held bytes, then EOF", got, err)
	}
	w.server.Write([]byte("answer"))
	w.server.CloseWrite()
	w.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(w.client); err != nil || string(got) != "answer" {
		t.Fatalf("client got %q, %v; want the server's answer", got, err)
	}
	if r := w.result(t); r.End != Closed {
		t.Errorf("Result = %+v, want Closed", r)
	}
}
