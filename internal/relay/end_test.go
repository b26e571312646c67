package relay

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestEndNamesTheSide checks Result says which side ended the connection,
// and how, whichever direction the error surfaced in: a client that
// resets while the server streams fails the write of the server's bytes
// to the client, and that is the client's doing, not the upstream's.
func TestEndNamesTheSide(t *testing.T) {
	for _, tc := range []struct {
		name string
		// run ends the connection through the world's two peers.
		run func(t *testing.T, w *world)
		end End
		by  Side
		// errs: the direction that saw the end carries an error (a
		// close that the late bytes turned into a reset).
		errs bool
	}{
		{"client resets while the upstream streams", func(t *testing.T, w *world) {
			stream(w.server)
			readSome(t, w.client)
			abort(w.client)
		}, Reset, Client, true},
		{"client resets while it streams", func(t *testing.T, w *world) {
			stream(w.client)
			drain(t, w.server)
			abort(w.client)
		}, Reset, Client, true},
		{"upstream resets while it streams", func(t *testing.T, w *world) {
			stream(w.server)
			drain(t, w.client)
			abort(w.server)
		}, Reset, Upstream, true},
		{"upstream resets while the client streams", func(t *testing.T, w *world) {
			stream(w.client)
			readSome(t, w.server)
			abort(w.server)
		}, Reset, Upstream, true},
		{"client closes, then the upstream", func(t *testing.T, w *world) {
			w.client.Close()
			io.Copy(io.Discard, w.server)
			w.server.Close()
		}, Closed, Client, false},
		{"upstream closes, then the client", func(t *testing.T, w *world) {
			w.server.Close()
			io.Copy(io.Discard, w.client)
			w.client.Close()
		}, Closed, Upstream, false},
		{"client closes while the upstream still sends", func(t *testing.T, w *world) {
			// The client has read all there was and closes (a FIN); the
			// server, told by the EOF, sends on: the client's socket
			// answers those bytes with a reset. Still the client's close.
			w.server.Write([]byte("a"))
			if _, err := io.ReadFull(w.client, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			w.client.Close()
			io.Copy(io.Discard, w.server)
			stream(w.server)
		}, Closed, Client, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, loopsFor(t), time.Minute)
			tc.run(t, w)
			r := w.result(t)
			if r.End != tc.end || r.By != tc.by {
				t.Errorf("Result ended %v by %v, want %v by %v (%+v)", r.End, r.By, tc.end, tc.by, r)
			}
			if errs := r.UpErr != nil || r.DownErr != nil; errs != tc.errs {
				t.Errorf("Result errors %v, %v; want errors %v", r.UpErr, r.DownErr, tc.errs)
			}
		})
	}
}

// stream writes to c until a write fails.
func stream(c *net.TCPConn) {
	go func() {
		buf := make([]byte, 16<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
}

// readSome reads the first bytes that reach c: the stream is flowing.
func readSome(t *testing.T, c *net.TCPConn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
}

// drain reads the first bytes that reach c, then the rest in the
// background. (A source that resets while its direction waits for a full
// destination is noticed only when the destination drains: the loop has
// stopped reading it, see mute.)
func drain(t *testing.T, c *net.TCPConn) {
	readSome(t, c)
	go io.Copy(io.Discard, c)
}

// abort closes c with a reset (SO_LINGER 0).
func abort(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}
