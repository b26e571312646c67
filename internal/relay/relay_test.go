package relay

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

// world is client <-> [cIn | relay | uOut] <-> server.
type world struct {
	client, server *net.TCPConn
	done           chan Result
}

func newWorld(t testing.TB, idle time.Duration) *world {
	client, cIn := testnet.Pair(t)
	uOut, server := testnet.Pair(t)
	w := &world{client: client, server: server, done: make(chan Result, 1)}
	go func() { w.done <- Relay(cIn, uOut, idle) }()
	t.Cleanup(func() { client.Close(); server.Close() })
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
			w := newWorld(t, time.Minute)
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
				t.Errorf("Relay counted up=%d down=%d, want %d %d", r.Up, r.Down, len(up), len(down))
			}
			if r.UpErr != nil || r.DownErr != nil || r.Idle {
				t.Errorf("Relay = %+v, want clean EOFs", r)
			}
		})
	}
}

// TestRelayIdle checks that a connection where nothing moves is closed and
// reported idle, while the relay keeps one that moves bytes alive.
func TestRelayIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	w := newWorld(t, idle)
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
	if !r.Idle {
		t.Errorf("Relay = %+v, want Idle", r)
	}
	if _, err := w.client.Read(make([]byte, 1)); err == nil {
		t.Error("client connection still open after idle timeout")
	}
}

// TestRelayResetPassedOn checks that a client reset reaches the server as a
// reset, not as a clean EOF.
func TestRelayResetPassedOn(t *testing.T) {
	w := newWorld(t, time.Minute)
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
	w := newWorld(t, time.Minute)
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

// TestRelayPortable runs the non-splice path over net.Pipe.
func TestRelayPortable(t *testing.T) {
	c1, c2 := net.Pipe()
	u1, u2 := net.Pipe()
	done := make(chan Result, 1)
	go func() { done <- Relay(c2, u1, time.Minute) }()
	go func() {
		c1.Write([]byte("ping"))
	}()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(u2, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("got %q, %v", buf, err)
	}
	go u2.Write([]byte("pong"))
	if _, err := io.ReadFull(c1, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("got %q, %v", buf, err)
	}
	c1.Close()
	r := <-done
	if r.Up != 4 || r.Down != 4 {
		t.Errorf("Relay counted %d/%d, want 4/4", r.Up, r.Down)
	}
}

// BenchmarkRelay measures relay throughput over loopback with splice.
func BenchmarkRelay(b *testing.B) {
	w := newWorld(b, time.Minute)
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
