package gateway

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

var long = flag.Bool("long", false, "run the long reliability tests (1,000 transfers up to 64 MiB)")

// stream is a deterministic byte stream: n bytes of ChaCha8 output from seed.
type stream struct {
	r *rand.ChaCha8
	n int64
}

func newStream(seed uint64, n int64) *stream {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return &stream{r: rand.NewChaCha8(s), n: n}
}

func (s *stream) Read(p []byte) (int, error) {
	if s.n == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), s.n)]
	s.r.Read(p)
	s.n -= int64(len(p))
	return len(p), nil
}

func digest(seed uint64, n int64) [32]byte {
	h := sha256.New()
	io.Copy(h, newStream(seed, n))
	return [32]byte(h.Sum(nil))
}

func sum(h hash.Hash) [32]byte { return [32]byte(h.Sum(nil)) }

// integrityServer reads each connection's hello and 24-byte header (the
// size to send down, its seed, the id of the transfer), then sends that
// stream and half-closes while it hashes everything the client sends until
// EOF. What it received is reported on got.
func integrityServer(t *testing.T, got chan<- received) uint16 {
	ln := testnet.Listen(t)
	testnet.Serve(t, ln, func(conn net.Conn) {
		c := conn.(*net.TCPConn)
		var hdr [24]byte
		if readRecord(c) != nil {
			return
		}
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			got <- received{err: err}
			return
		}
		down, seed, id := binary.BigEndian.Uint64(hdr[:]), binary.BigEndian.Uint64(hdr[8:]), binary.BigEndian.Uint64(hdr[16:])
		sent := make(chan error, 1)
		go func() {
			_, err := io.Copy(c, newStream(seed, int64(down)))
			if err == nil {
				err = c.CloseWrite()
			}
			sent <- err
		}()
		h := sha256.New()
		n, err := io.Copy(h, c)
		if serr := <-sent; err == nil {
			err = serr
		}
		got <- received{id: id, n: n, sum: sum(h), err: err}
	})
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

type received struct {
	id  uint64
	n   int64
	sum [32]byte
	err error
}

// TestIntegrity moves transfers of random sizes both ways at once through
// egressd, each side half-closing when it has sent all, and checks by
// sha256 at both ends that no byte was lost, reordered or added. With
// -long: 1,000 transfers of up to 64 MiB each way.
func TestIntegrity(t *testing.T) {
	transfers, maxExp, parallel := 200, 22, 16 // sizes log-uniform up to 4 MiB
	if *long {
		transfers, maxExp, parallel = 1000, 26, 64 // up to 64 MiB
	}
	if testing.Short() {
		transfers = 20
	}
	got := make(chan received, transfers)
	port := integrityServer(t, got)
	// first_bytes is long here: with 64 clients hashing on two cores a
	// client can be starved for longer than the usual 300 ms between its
	// connect and its hello, and egressd would (rightly) take it for a
	// server-first client and refuse it. That is a timeout, not integrity.
	w := newWorldTimeouts(t, baseRecords, basePolicy, port,
		"{first_bytes: 10s, client_hello: 10s, connect: 5s, idle: 2m}")
	hello := craftedHello("good.test")

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	size := func() int64 {
		switch rng.IntN(20) {
		case 0:
			return 0
		case 1:
			return 1 << maxExp // the largest size, every time in a while
		}
		return rng.Int64N(1 << (1 + rng.IntN(maxExp)))
	}
	type plan struct {
		id       uint64
		up, down int64
		seedUp   uint64
		seedDown uint64
	}
	plans := make([]plan, transfers)
	var total int64
	for i := range plans {
		plans[i] = plan{id: uint64(i), up: size(), down: size(), seedUp: rng.Uint64(), seedDown: rng.Uint64()}
		total += plans[i].up + plans[i].down
	}

	want := make(map[uint64]plan, transfers)
	var mu sync.Mutex
	jobs := make(chan plan)
	var wg sync.WaitGroup
	start := time.Now()
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range jobs {
				mu.Lock()
				want[p.id] = p
				mu.Unlock()
				if err := transfer(w, hello, p.id, p.up, p.down, p.seedUp, p.seedDown); err != nil {
					t.Errorf("transfer %d (up %d B, down %d B): %v", p.id, p.up, p.down, err)
				}
			}
		}()
	}
	for _, p := range plans {
		jobs <- p
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)

	bad := 0
	for range transfers {
		select {
		case r := <-got:
			p := want[r.id]
			if r.err != nil || r.n != p.up || r.sum != digest(p.seedUp, p.up) {
				bad++
				t.Errorf("transfer %d: server got %d B (want %d), sha256 match %v, err %v",
					r.id, r.n, p.up, r.sum == digest(p.seedUp, p.up), r.err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("the server did not report every transfer")
		}
	}
	t.Logf("%d transfers, %.1f MiB both ways, %d bad, in %v (%.0f MiB/s through egressd while hashing)",
		transfers, float64(total)/(1<<20), bad, elapsed.Round(time.Millisecond), float64(total)/(1<<20)/elapsed.Seconds())
}

// transfer is one client: hello, header, then its upload while it reads
// and checks the download; a half-close when the upload is done.
func transfer(w *world, hello []byte, id uint64, up, down int64, seedUp, seedDown uint64) error {
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(w.addr))
	if err != nil {
		return err
	}
	defer c.Close()
	var hdr [24]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(down))
	binary.BigEndian.PutUint64(hdr[8:], seedDown)
	binary.BigEndian.PutUint64(hdr[16:], id)
	sent := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.MultiReader(bytes.NewReader(hello), bytes.NewReader(hdr[:]), newStream(seedUp, up)))
		if err == nil {
			err = c.CloseWrite()
		}
		sent <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if serr := <-sent; serr != nil {
		return fmt.Errorf("upload: %w", serr)
	}
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if n != down || sum(h) != digest(seedDown, down) {
		return fmt.Errorf("download: got %d B, want %d; sha256 match %v", n, down, sum(h) == digest(seedDown, down))
	}
	return nil
}
