package relay

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestPipeBudget stalls connections whose client never reads while their
// server writes on: each direction stops with bytes it could not write,
// in a pipe if it spliced. The pipes the relay holds must stay within
// its budget (or within none, when making one fails for want of fds),
// the stalled connections must go on, and another connection's bulk
// transfer must still arrive whole: a direction that gets no pipe copies
// through the loop's buffer. Then the stalled clients read, and every
// byte their servers wrote must arrive.
func TestPipeBudget(t *testing.T) {
	const stalled = 6
	tests := []struct {
		name string
		max  int   // setMaxPipes
		fail error // what making a pipe fails with; nil: it works
		// sizeFail is what setting a new pipe's size fails with; nil:
		// it works.
		sizeFail error
		held     int // pipes the relay may hold at once
	}{
		{"budget spent by stalled readers", 2, nil, nil, 2},
		{"process out of fds", 64, syscall.EMFILE, nil, 0},
		{"system out of files", 64, syscall.ENFILE, nil, 0},
		{"user past its pipe pages", 64, nil, syscall.EPERM, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			withPipes(t, tt.max, tt.fail, tt.sizeFail)
			ls := loopsFor(t)
			if _, err := ls.pick(); err != nil { // the loops' own fds are in the base
				t.Fatal(err)
			}
			// Per connection the relay holds two sockets and the test
			// two (client and server); pipes come on top.
			limit := openFDs(t) + 4*(stalled+1) + 2*tt.held
			var worlds []*world
			var feeds []*feed
			for i := range stalled {
				w := newWorld(t, ls, time.Minute)
				f := newFeed(w.server, uint64(i))
				f.fill(t)
				worlds, feeds = append(worlds, w), append(feeds, f)
			}
			if n := openFDs(t); n > limit {
				t.Errorf("%d stalled connections: %d fds open, want at most %d", stalled, n, limit)
			}

			w := newWorld(t, ls, time.Minute)
			const size = 8 << 20
			bulk := newFeed(w.server, 100)
			errc := make(chan error, 1)
			go func() {
				err := bulk.write(size)
				if err == nil {
					err = w.server.CloseWrite()
				}
				errc <- err
			}()
			n, sum, most, err := readAll(t, w.client, limit)
			if err != nil {
				t.Fatalf("bulk transfer: %v", err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("server write: %v", err)
			}
			if n != bulk.n || sum != bulk.sum() {
				t.Errorf("bulk transfer: client read %d bytes, want the %d the server wrote, identical", n, bulk.n)
			}
			if most > limit {
				t.Errorf("during the bulk transfer: up to %d fds open, want at most %d", most, limit)
			}
			w.client.Close()
			if r := w.result(t); r.Down != size || r.DownErr != nil || r.End != Closed {
				t.Errorf("bulk transfer's Result = %+v, want %d bytes down, closed cleanly", r, size)
			}

			for i, w := range worlds {
				select {
				case r := <-w.done:
					t.Fatalf("stalled connection %d ended: %+v", i, r)
				default:
				}
				f := feeds[i]
				go func() {
					err := f.write(0) // what its last write left
					if err == nil {
						err = w.server.CloseWrite()
					}
					errc <- err
				}()
				n, sum, _, err := readAll(t, w.client, 0)
				if err != nil {
					t.Fatalf("stalled connection %d, once its client reads: %v (the server wrote %d)", i, err, f.n)
				}
				if err := <-errc; err != nil {
					t.Fatalf("stalled connection %d: server write: %v", i, err)
				}
				if n != f.n || sum != f.sum() {
					t.Errorf("stalled connection %d: client read %d bytes, want the %d the server wrote, identical", i, n, f.n)
				}
			}
		})
	}
}

// withPipes bounds the relay's pipes to max for one test, with making a
// pipe failing with fail and setting its size with sizeFail (unless nil),
// and empties the pool first: every pipe the test's directions hold is
// one they took under that bound.
func withPipes(t *testing.T, max int, fail, sizeFail error) {
	oldMax, oldPipe2, oldSize := maxPipes(), pipe2, setPipeSize
	t.Cleanup(func() {
		setMaxPipes(oldMax)
		pipe2, setPipeSize = oldPipe2, oldSize
		pipes.Lock()
		pipes.retryAt = 0 // the next test makes pipes at once
		pipes.Unlock()
	})
	pipes.Lock()
	free := pipes.free
	pipes.free = nil
	pipes.Unlock()
	for _, p := range free {
		p.close()
	}
	setMaxPipes(max)
	if fail != nil {
		pipe2 = func([]int, int) error { return fail }
	}
	if sizeFail != nil {
		setPipeSize = func(int) error { return sizeFail }
	}
}

// TestPipeSizeRefused: a pipe whose size cannot be set (an unprivileged
// user past fs.pipe-user-pages-soft gets 2-slot pipes, and EPERM when it
// asks for more) is closed, not used nor pooled: it would move a few KiB
// per splice pair, slower than copying. getPipe says errNoPipe, and makes
// no pipe again before pipeRetry, as after a failed pipe2.
func TestPipeSizeRefused(t *testing.T) {
	withPipes(t, 64, nil, syscall.EPERM)
	made := 0
	pipe2 = func(fds []int, flags int) error {
		made++
		return syscall.Pipe2(fds, flags)
	}
	before := openFDs(t)
	pipes.Lock()
	heldBefore := pipes.held
	pipes.Unlock()
	for range 2 {
		if p, err := getPipe(); err != errNoPipe {
			if p != nil {
				p.close()
			}
			t.Fatalf("getPipe() = %v, %v; want errNoPipe", p, err)
		}
	}
	if made != 1 {
		t.Errorf("made %d pipes, want 1: none within pipeRetry of a refused size", made)
	}
	if n := openFDs(t); n != before {
		t.Errorf("%d fds open after, %d before: the refused pipe was not closed", n, before)
	}
	pipes.Lock()
	held, idle := pipes.held, len(pipes.free)
	pipes.Unlock()
	if held != heldBefore || idle != 0 {
		t.Errorf("pipes held %d (%d before), pooled %d; want none more", held, heldBefore, idle)
	}
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// feed writes a seeded pseudo-random stream to a server socket and keeps
// the hash of what it wrote, for the client's copy to be compared with.
type feed struct {
	conn *net.TCPConn
	rng  *rand.ChaCha8
	buf  []byte
	left []byte // made but not written yet: a deadline cut the write short
	h    hash.Hash
	n    int64
}

func newFeed(conn *net.TCPConn, seed uint64) *feed {
	var s [32]byte
	s[0] = byte(seed)
	return &feed{conn: conn, rng: rand.NewChaCha8(s), buf: make([]byte, 64<<10), h: sha256.New()}
}

// write writes what an earlier write left, then n more bytes.
func (f *feed) write(n int) error {
	for n > 0 || len(f.left) > 0 {
		if len(f.left) == 0 {
			f.left = f.buf[:min(n, len(f.buf))]
			f.rng.Read(f.left)
			n -= len(f.left)
		}
		m, err := f.conn.Write(f.left)
		f.h.Write(f.left[:m])
		f.n += int64(m)
		f.left = f.left[m:]
		if err != nil {
			return err
		}
	}
	return nil
}

// fill writes until a write stays blocked for a while: the client, which
// never reads, holds all it will, and so does the relay's direction.
func (f *feed) fill(t *testing.T) {
	for {
		f.conn.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		err := f.write(len(f.buf))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			f.conn.SetWriteDeadline(time.Time{})
			return
		}
		if err != nil {
			t.Fatalf("filling a stalled connection: %v", err)
		}
	}
}

func (f *feed) sum() (s [32]byte) { return [32]byte(f.h.Sum(nil)) }

// readAll reads c to EOF and returns how many bytes came and their hash;
// with limit > 0, it also counts the open fds after each megabyte and
// returns the most it saw.
func readAll(t *testing.T, c *net.TCPConn, limit int) (n int64, sum [32]byte, most int, err error) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h := sha256.New()
	for {
		var m int64
		m, err = io.CopyN(h, c, 1<<20)
		n += m
		if limit > 0 {
			most = max(most, openFDs(t))
		}
		if err == io.EOF {
			return n, [32]byte(h.Sum(nil)), most, nil
		}
		if err != nil {
			return n, sum, most, fmt.Errorf("client read after %d bytes: %w", n, err)
		}
	}
}

// TestPipesFor checks the default bound against the open-files limit:
// pipes (two fds each) take at most half of the reserve config.DeriveLimits
// keeps for all but connections' sockets, min(max(256, n/10), n/2).
func TestPipesFor(t *testing.T) {
	for _, tt := range []struct {
		noFile uint64
		want   int
	}{
		{1024, 25},
		{65536, 1638},
		{1 << 20, 26214},
		{64, 1},
		{1, 1}, // at least one
		{1<<64 - 1, 1<<31 - 1},
	} {
		if got := pipesFor(tt.noFile); got != tt.want {
			t.Errorf("pipesFor(%d) = %d, want %d", tt.noFile, got, tt.want)
		}
		if reserve := min(max(256, tt.noFile/10), tt.noFile/2); tt.noFile >= 64 && uint64(2*tt.want) > reserve/2 {
			t.Errorf("pipesFor(%d) = %d: %d fds, more than half the reserve of %d", tt.noFile, tt.want, 2*tt.want, reserve)
		}
	}
}
