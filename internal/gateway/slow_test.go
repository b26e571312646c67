package gateway

import (
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSilentAndSlowCrowd holds 500 clients that send nothing and 500 that
// trickle a ClientHello one byte a second while good clients come and go:
// every good client is served, every stalled one is closed after its
// timeout and logged, and the memory they cost is reported.
func TestSilentAndSlowCrowd(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 stalled connections; skipped with -short")
	}
	const n = 500
	w := newWorldTimeouts(t, baseRecords, basePolicy, 0,
		"{first_bytes: 200ms, client_hello: 3s, connect: 2s, idle: 1m}")
	go func() {
		for range w.serverCh {
		}
	}()
	hello := goHelloBytes(t, "good.test")

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	var wg sync.WaitGroup
	ended := make(chan time.Duration, 2*n)
	start := time.Now()
	hold := func(c net.Conn) {
		defer wg.Done()
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		c.Read(make([]byte, 1)) // returns when egressd closes
		ended <- time.Since(start)
		c.Close()
	}
	conns := make([]net.Conn, 0, 2*n)
	for i := 0; i < 2*n; i++ {
		c, err := net.Dial("tcp", w.addr.String())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if i >= n {
			// The slow half starts its hello at once, so that no slow
			// client is still silent when first_bytes runs out.
			if _, err := c.Write(hello[:1]); err != nil {
				t.Fatal(err)
			}
		}
		conns = append(conns, c)
	}
	for i, c := range conns {
		wg.Add(1)
		go hold(c)
		if i >= n { // the slow half: one more byte of the hello per second
			wg.Add(1)
			go func(c net.Conn) {
				defer wg.Done()
				for _, b := range hello[1:] {
					time.Sleep(time.Second)
					if _, err := c.Write([]byte{b}); err != nil {
						return
					}
				}
			}(c)
		}
	}

	// Good clients, while the crowd stalls.
	time.Sleep(500 * time.Millisecond)
	var mid runtime.MemStats
	runtime.ReadMemStats(&mid)
	// The sni listener defers accepts: the silent half is still in the
	// kernel's queue now, so the heap is shared by the connections egressd
	// holds, not by all 1,000.
	held := w.gw.active.Load()
	for i := 0; i < 20; i++ {
		if got, _, c := send(t, w.addr, hello); got != gotServerRecord {
			t.Fatalf("good client %d amid 1,000 stalled ones: %v", i, got)
		} else {
			c.Close()
		}
	}

	wg.Wait()
	close(ended)
	var last time.Duration
	for d := range ended {
		last = max(last, d)
	}
	// Every stalled client was closed by egressd (not by its own 30 s read
	// deadline): the last one well before that.
	if last > 20*time.Second {
		t.Errorf("the last stalled client was closed after %v", last)
	}
	text := w.logText()
	silent, slow := countLines(text, `"protocol":"server-first"`), countLines(text, "client_hello timeout")
	if silent < n || slow < n {
		t.Errorf("log: %d server-first and %d client_hello timeouts, want %d each", silent, slow, n)
	}
	if held < n {
		t.Fatalf("egressd held %d connections at the snapshot, want at least the %d slow ones", held, n)
	}
	perConn := (int64(mid.HeapInuse) - int64(before.HeapInuse)) / held
	t.Logf("1,000 stalled clients: heap in use +%d B per connection held (%d held at the snapshot); last closed after %v",
		perConn, held, last.Round(10*time.Millisecond))
	if perConn > 12<<10 {
		t.Errorf("a stalled connection costs %d B of heap, want under 12 KiB (one 4 KiB peek buffer and the connection's own state)", perConn)
	}
}

func countLines(text, sub string) int {
	n := 0
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}
