package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// world is client <-> [cIn | relay | uOut] <-> server: the gateway's side
// of client relayed by the event loop (Dial, Attach, Start) to a server it
// dialled.
type world struct {
	client, server *net.TCPConn
	done           chan Result
	rc             *Conn
}

// TestMain gives each loop a P of its own beyond the Ps the tests use, as
// egressd's run does (see Loops).
func TestMain(m *testing.M) {
	runtime.GOMAXPROCS(2 * runtime.GOMAXPROCS(0))
	os.Exit(m.Run())
}

// loopsFor returns a set of loops that is closed when the test ends.
func loopsFor(tb testing.TB) *Loops {
	ls := NewLoops(0)
	tb.Cleanup(func() { ls.Close() })
	return ls
}

// newWorld relays a new world's connection on one of ls.
func newWorld(t testing.TB, ls *Loops, idle time.Duration) *world {
	return newWorldWith(t, ls, idle, nil)
}

// newWorldWith is newWorld with set called on the Conn before Start.
func newWorldWith(t testing.TB, ls *Loops, idle time.Duration, set func(*Conn)) *world {
	client, cIn := testnet.Pair(t)
	w := &world{client: client, done: make(chan Result, 1)}
	ln := testnet.Listen(t)
	defer ln.Close()
	rc, err := ls.Dial(context.Background(), netip.MustParseAddrPort(ln.Addr().String()), 0, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.server, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Attach(cIn, nil, idle, func(r Result) { w.done <- r }); err != nil {
		t.Fatal(err)
	}
	if set != nil {
		set(rc)
	}
	rc.Start()
	w.rc = rc
	t.Cleanup(func() { client.Close(); w.server.Close() })
	return w
}

func (w *world) result(t *testing.T) Result {
	t.Helper()
	select {
	case r := <-w.done:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not end")
	}
	return Result{}
}

// TestRelayBothWaysWithHalfClose sends data each way, half-closes each
// side in turn and checks both streams arrive whole and counted.
func TestRelayBothWaysWithHalfClose(t *testing.T) {
	for _, size := range []int{0, 1, 70_000, 3 << 20} {
		t.Run("", func(t *testing.T) {
			w := newWorld(t, loopsFor(t), time.Minute)
			up := make([]byte, size)
			down := make([]byte, size/2+3)
			rand.Read(up)
			rand.Read(down)

			errc := make(chan error, 2)
			var gotAtServer, gotAtClient []byte
			go func() {
				// The server reads the whole upload (until the client's
				// half-close arrives as EOF), then answers and closes.
				b, err := io.ReadAll(w.server)
				gotAtServer = b
				if err == nil {
					_, err = w.server.Write(down)
				}
				if err == nil {
					err = w.server.CloseWrite()
				}
				errc <- err
			}()
			go func() {
				_, err := w.client.Write(up)
				if err == nil {
					err = w.client.CloseWrite() // half-close: the answer must still come back
				}
				if err == nil {
					gotAtClient, err = io.ReadAll(w.client)
				}
				errc <- err
			}()
			for range 2 {
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
			}
			if sha256.Sum256(gotAtServer) != sha256.Sum256(up) {
				t.Errorf("server got %d bytes, want %d identical", len(gotAtServer), len(up))
			}
			if !bytes.Equal(gotAtClient, down) {
				t.Errorf("client got %d bytes, want %d identical", len(gotAtClient), len(down))
			}
			r := w.result(t)
			if r.Up != int64(len(up)) || r.Down != int64(len(down)) {
				t.Errorf("relay counted up=%d down=%d, want %d %d", r.Up, r.Down, len(up), len(down))
			}
			if r.UpErr != nil || r.DownErr != nil || r.End != Closed {
				t.Errorf("Result = %+v, want clean EOFs", r)
			}
		})
	}
}

// TestRelayIdle checks that a connection where nothing moves is closed and
// reported idle, while the relay keeps one that moves bytes alive.
func TestRelayIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	w := newWorld(t, loopsFor(t), idle)
	// Keep bytes moving for longer than the idle timeout, one way only:
	// activity in either direction keeps the connection.
	for range 6 {
		if _, err := w.client.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := io.ReadFull(w.server, b[:]); err != nil {
			t.Fatalf("relay closed an active connection: %v", err)
		}
		time.Sleep(idle / 3)
	}
	r := w.result(t)
	if r.End != Idle || r.By != Local {
		t.Errorf("Result = %+v, want Idle by egressd", r)
	}
	if _, err := w.client.Read(make([]byte, 1)); err == nil {
		t.Error("client connection still open after idle timeout")
	}
}

// TestRelayResetPassedOn checks that a client reset reaches the server as a
// reset, not as a clean EOF.
func TestRelayResetPassedOn(t *testing.T) {
	w := newWorld(t, loopsFor(t), time.Minute)
	if _, err := w.client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(w.server, buf); err != nil {
		t.Fatal(err)
	}
	w.client.SetLinger(0)
	w.client.Close()
	r := w.result(t)
	if !errors.Is(r.UpErr, syscall.ECONNRESET) {
		t.Errorf("UpErr = %v, want ECONNRESET", r.UpErr)
	}
	w.server.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := w.server.Read(buf)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("server read after client reset = %v, want ECONNRESET", err)
	}
}

// TestIdleConnectionHoldsNoPipe checks the property the splice design is
// for: once a burst is relayed and the connection goes quiet, its pipes are
// back in the pool.
func TestIdleConnectionHoldsNoPipe(t *testing.T) {
	w := newWorld(t, loopsFor(t), time.Minute)
	before := IdlePipes()
	msg := bytes.Repeat([]byte("y"), 100_000)
	go w.client.Write(msg)
	if _, err := io.ReadFull(w.server, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	go w.server.Write(msg)
	if _, err := io.ReadFull(w.client, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	// Both directions are parked waiting for bytes; their pipes must have
	// been returned. Poll briefly: the return happens just before parking.
	deadline := time.Now().Add(5 * time.Second)
	for IdlePipes() < max(before, 1) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := IdlePipes(); got < 1 {
		t.Errorf("IdlePipes() = %d after the connection went idle, want >= 1 (pipes returned)", got)
	}
	w.client.Close()
	w.server.Close()
	w.result(t)
}

// BenchmarkRelay measures relay throughput over loopback with splice.
func BenchmarkRelay(b *testing.B) {
	w := newWorld(b, loopsFor(b), time.Minute)
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	go func() {
		io.Copy(io.Discard, w.server)
	}()
	b.ResetTimer()
	for range b.N {
		if _, err := w.client.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLoopClose checks that Close ends a loop relay from another
// goroutine: both peers see their connection end, done reports
// net.ErrClosed, and the sockets are gone.
func TestLoopClose(t *testing.T) {
	w := newWorld(t, loopsFor(t), time.Minute)
	if _, err := w.client.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(w.server, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	w.rc.Close()
	r := w.result(t)
	if !errors.Is(r.UpErr, net.ErrClosed) || !errors.Is(r.DownErr, net.ErrClosed) || r.Up != 2 || r.End != Drained || r.By != Local {
		t.Errorf("after Close: %+v, want 2 bytes up, net.ErrClosed both ways, Drained by egressd", r)
	}
	for _, c := range []*net.TCPConn{w.client, w.server} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("peer read %d bytes after Close, want the connection ended", n)
		}
	}
	w.rc.Close() // a second Close, after the end, is harmless
}

// TestLoopsClose checks that closing a set of loops ends the relays still
// on it, as Conn.Close does, stops its goroutines, and refuses new dials;
// a set never used starts nothing.
func TestLoopsClose(t *testing.T) {
	before := runtime.NumGoroutine()
	ls := NewLoops(2)
	w := newWorld(t, ls, time.Minute)
	if err := ls.Close(); err != nil {
		t.Fatal(err)
	}
	r := w.result(t)
	if !errors.Is(r.UpErr, net.ErrClosed) || !errors.Is(r.DownErr, net.ErrClosed) || r.End != Drained || r.By != Local {
		t.Errorf("relay on a closed set: %+v, want net.ErrClosed both ways, Drained by egressd", r)
	}
	w.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := w.client.Read(make([]byte, 1)); err == nil {
		t.Errorf("client read %d bytes after the loops closed, want the connection ended", n)
	}
	// A goroutine that has ended its work may still be on its way out
	// (another test's, too): wait for the count, a while.
	n := runtime.NumGoroutine()
	for deadline := time.Now().Add(5 * time.Second); n > before && time.Now().Before(deadline); n = runtime.NumGoroutine() {
		time.Sleep(10 * time.Millisecond)
	}
	if n > before {
		t.Errorf("%d goroutines after Close, %d before the loops", n, before)
	}
	ln := testnet.Listen(t)
	defer ln.Close()
	if _, err := ls.Dial(context.Background(), netip.MustParseAddrPort(ln.Addr().String()), 0, time.Second, nil); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Dial after Close: %v, want net.ErrClosed", err)
	}
	ls.Close() // a second Close is harmless

	unused := NewLoops(1)
	unused.Close()
	if unused.loops != nil {
		t.Error("Close of a set never used started its loops")
	}
}

// TestLoopManyConnections relays many connections at once through the
// loops, each with its own bytes, and checks nothing is crossed or lost.
func TestLoopManyConnections(t *testing.T) {
	const n = 200
	errc := make(chan error, n)
	ls := loopsFor(t)
	for i := range n {
		w := newWorld(t, ls, time.Minute)
		go func() {
			msg := bytes.Repeat([]byte{byte(i)}, 1000+i*97)
			go func() {
				w.client.Write(msg)
				w.client.CloseWrite()
			}()
			got, err := io.ReadAll(w.server)
			if err == nil && !bytes.Equal(got, msg) {
				err = errors.New("bytes differ")
			}
			if err == nil {
				_, err = w.server.Write(got[:i])
				w.server.CloseWrite()
			}
			if err == nil {
				var back []byte
				back, err = io.ReadAll(w.client)
				if err == nil && !bytes.Equal(back, got[:i]) {
					err = errors.New("answer differs")
				}
			}
			errc <- err
		}()
		t.Cleanup(func() { w.result(t) })
	}
	for range n {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

// TestDialAttach dials through the loop, attaches a client with first
// bytes bigger than a socket's send buffer (so part of them waits for the
// loop), and relays both ways.
func TestDialAttach(t *testing.T) {
	ln := testnet.Listen(t)
	first := bytes.Repeat([]byte("h"), 4<<20)
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b := make([]byte, len(first)+5)
		if _, err := io.ReadFull(c, b); err != nil {
			got <- nil
			return
		}
		c.Write([]byte("pong"))
		got <- b
	}()
	rc, err := loopsFor(t).Dial(context.Background(), netip.MustParseAddrPort(ln.Addr().String()), 0, 5*time.Second, first)
	if err != nil {
		t.Fatal(err)
	}
	client, cIn := testnet.Pair(t)
	done := make(chan Result, 1)
	if err := rc.Attach(cIn, first, time.Minute, func(r Result) { done <- r }); err != nil {
		t.Fatal(err)
	}
	rc.Start()
	client.Write([]byte("after"))
	b := <-got
	if !bytes.Equal(b, append(first, "after"...)) {
		t.Fatalf("server got %d bytes, want the %d first bytes then %q", len(b), len(first), "after")
	}
	pong := make([]byte, 4)
	if _, err := io.ReadFull(client, pong); err != nil || string(pong) != "pong" {
		t.Fatalf("client read %q, %v", pong, err)
	}
	client.Close()
	r := <-done
	if r.Up != 5 || r.Down != 4 {
		t.Errorf("counted %d up, %d down; want 5 and 4 (first bytes are the caller's to count)", r.Up, r.Down)
	}
}

// TestDialFailures checks that a refused dial and a cancelled one come back
// as errors that say so, and leave nothing registered.
func TestDialFailures(t *testing.T) {
	ln := testnet.Listen(t)
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close() // nothing listens there now
	ls := loopsFor(t)
	_, err := ls.Dial(context.Background(), addr, 0, 5*time.Second, []byte("hello"))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial to a closed port: %v, want connection refused", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "dial" {
		t.Errorf("dial error %#v is not a dial *net.OpError", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// 192.0.2.1 (TEST-NET-1) is never answered here: the connect stays in
	// progress until the context, already cancelled, ends it.
	if _, err := ls.Dial(ctx, netip.MustParseAddrPort("192.0.2.1:9"), 0, time.Minute, nil); err == nil {
		t.Error("dial with a cancelled context succeeded")
	}
}

// TestDialFamilies dials IPv4, IPv6 and an IPv4-mapped IPv6 address (which
// must connect as IPv4) and checks the server sees the dialled socket.
func TestDialFamilies(t *testing.T) {
	for _, tc := range []struct{ listen, dial string }{
		{"127.0.0.1:0", "127.0.0.1"},
		{"[::1]:0", "::1"},
		{"127.0.0.1:0", "::ffff:127.0.0.1"},
	} {
		t.Run(tc.dial, func(t *testing.T) {
			ln, err := net.Listen("tcp", tc.listen)
			if err != nil {
				t.Skipf("no %s on this machine: %v", tc.listen, err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			accepted := make(chan netip.AddrPort, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					accepted <- netip.AddrPort{}
					return
				}
				accepted <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
				c.Close()
			}()
			dst := netip.AddrPortFrom(netip.MustParseAddr(tc.dial), uint16(port))
			rc, err := loopsFor(t).Dial(context.Background(), dst, 0, 5*time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			local := rc.UpstreamLocal()
			rc.Abandon()
			peer := <-accepted
			if !peer.IsValid() || peer.Port() != local.Port() || peer.Addr().Unmap() != local.Addr().Unmap() {
				t.Fatalf("server saw %v, the dialled socket is %v", peer, local)
			}
		})
	}
}

// TestOnBatchFollowsEveryEnd checks the promise the gateway's held log
// lines rest on: after a connection's done runs, its loop calls the
// OnBatch function with quiet set before it waits for long, whichever way
// the connection ended: its peers closing it, or the idle sweep of a loop
// that had parked.
func TestOnBatchFollowsEveryEnd(t *testing.T) {
	for _, tc := range []struct {
		name  string
		idle  time.Duration
		close bool
	}{
		{"peers close", time.Minute, true},
		{"idle sweep", 200 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ended atomic.Bool
			flushed := make(chan struct{}, 1)
			ls := loopsFor(t)
			ls.OnBatch(func(quiet bool) bool {
				if quiet && ended.Load() {
					select {
					case flushed <- struct{}{}:
					default:
					}
				}
				return false
			})
			client, cIn := testnet.Pair(t)
			ln := testnet.Listen(t)
			rc, err := ls.Dial(context.Background(), netip.MustParseAddrPort(ln.Addr().String()), 0, 5*time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			server, err := ln.AcceptTCP()
			ln.Close()
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			defer client.Close()
			done := make(chan Result, 1)
			if err := rc.Attach(cIn, nil, tc.idle, func(r Result) { ended.Store(true); done <- r }); err != nil {
				t.Fatal(err)
			}
			rc.Start()
			if tc.close {
				client.Close()
				server.Close()
			}
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("relay did not end")
			}
			select {
			case <-flushed:
			case <-time.After(10 * time.Second):
				t.Fatal("no quiet OnBatch call after the connection ended")
			}
		})
	}
}
