package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/egressd/egressd/internal/limit"
)

// perName counts the resolver's calls for each name and answers every one
// at once, with one address and a long TTL.
type perName struct {
	mu    sync.Mutex
	calls map[string]int
	ttl   time.Duration
}

func (p *perName) Resolve(ctx context.Context, name string) (Lookup, error) {
	p.mu.Lock()
	if p.calls == nil {
		p.calls = make(map[string]int)
	}
	p.calls[name]++
	p.mu.Unlock()
	return Lookup{Addrs: []netip.Addr{netip.AddrFrom4([4]byte{198, 51, 100, 1})}, TTL: p.ttl}, nil
}

func (p *perName) count(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[name]
}

// countOne answers every name at once and counts the queries for one name
// only: counting every name would hold them all on the heap the test
// measures.
type countOne struct {
	name string
	n    atomic.Int32
}

func (c *countOne) Resolve(ctx context.Context, name string) (Lookup, error) {
	if name == c.name {
		c.n.Add(1)
	}
	return Lookup{Addrs: []netip.Addr{netip.AddrFrom4([4]byte{198, 51, 100, 1})}, TTL: time.Hour}, nil
}

// TestCacheFloodBounded: a client that owns a wildcard zone has the gateway
// resolve 200,000 unique names. The cache stays within its byte budget (and
// so within the entry count that budget allows), the heap it holds stays
// within the budget too, and a name that other clients use between the
// floods is never asked for again.
func TestCacheFloodBounded(t *testing.T) {
	const floods, perFlood = 10, 20_000
	const hot = "hot.example.test"
	r := &countOne{name: hot}
	c := &Cache{Resolver: r} // the gateway's: DefaultCacheBytes
	ctx := context.Background()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c.Resolve(ctx, hot)
	maxEntries := DefaultCacheBytes / entryOverhead
	for f := range floods {
		for i := range perFlood {
			c.Resolve(ctx, fmt.Sprintf("f%d.attacker.test", f*perFlood+i))
		}
		if s := c.Stats(); s.Bytes > DefaultCacheBytes || s.Entries > maxEntries {
			t.Fatalf("after flood %d: Stats() = %+v, want at most %d bytes and %d entries", f, s, DefaultCacheBytes, maxEntries)
		}
		c.Resolve(ctx, hot)
		if n := r.n.Load(); n != 1 {
			t.Fatalf("after flood %d the hot name was resolved %d times, want 1 (cached)", f, n)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	s := c.Stats()
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d entries, %d bytes counted, heap grew %d bytes (%.0f per entry), %d evictions",
		s.Entries, s.Bytes, growth, float64(growth)/float64(s.Entries), s.Evictions)
	if growth > DefaultCacheBytes {
		t.Errorf("heap grew %d bytes, want at most the budget, %d", growth, DefaultCacheBytes)
	}
	if s.Evictions == 0 {
		t.Errorf("no evictions: the flood did not fill the cache, the test proves nothing")
	}
	runtime.KeepAlive(c)
}

// TestCacheSecondChance: a name that was hit survives floods of names asked
// for once, however long; one that was never hit goes with the flood; and
// in the main queue, a name hit once per pass stays while one hit no more
// goes.
func TestCacheSecondChance(t *testing.T) {
	r := &perName{ttl: time.Hour}
	size := entrySize("n000.test", Lookup{Addrs: make([]netip.Addr, 1)}, nil)
	c := &Cache{Resolver: r, MaxBytes: 100 * size}
	ctx := context.Background()
	c.Resolve(ctx, "hit.test")
	c.Resolve(ctx, "hit.test") // the hit
	c.Resolve(ctx, "cold.test")
	for i := range 1000 {
		c.Resolve(ctx, fmt.Sprintf("f%03d.test", i))
	}
	c.Resolve(ctx, "hit.test")
	c.Resolve(ctx, "cold.test")
	if n, m := r.count("hit.test"), r.count("cold.test"); n != 1 || m != 2 {
		t.Errorf("after a flood of 10 times the cache: hit.test resolved %d times, cold.test %d; want 1 and 2", n, m)
	}
	// Promote more names than the cache holds, then keep hitting only 40
	// of them between floods: those stay, the others make room.
	for i := range 120 {
		name := fmt.Sprintf("m%03d.test", i)
		c.Resolve(ctx, name)
		c.Resolve(ctx, name)
	}
	for round := range 20 {
		for i := range 40 {
			c.Resolve(ctx, fmt.Sprintf("m%03d.test", 80+i))
		}
		for i := range 50 {
			c.Resolve(ctx, fmt.Sprintf("g%d-%d.test", round, i))
		}
	}
	for i := 80; i < 120; i++ {
		if n := r.count(fmt.Sprintf("m%03d.test", i)); n != 1 {
			t.Errorf("m%03d.test, hit in every round, was resolved %d times, want 1", i, n)
		}
	}
	if s := c.Stats(); s.Bytes > c.MaxBytes {
		t.Errorf("Stats() = %+v, over the budget %d", s, c.MaxBytes)
	}
}

// TestCacheEntrySize: every entry is counted with its name, its addresses
// and its error, so long names and long answers take more of the budget.
func TestCacheEntrySize(t *testing.T) {
	four := make([]netip.Addr, 4)
	tests := []struct {
		name string
		l    Lookup
		err  error
		want int
	}{
		{"a.test", Lookup{}, nil, entryOverhead + 6},
		{"a.test", Lookup{Addrs: four}, nil, entryOverhead + 6 + 4*addrSize},
		{"a.test", Lookup{Addrs: four[:1]}, nil, entryOverhead + 6 + 4*addrSize}, // the array held, not the slice
		{"long-label.a.test", Lookup{}, nil, entryOverhead + 17},
		{"a.test", Lookup{}, errors.New("no such host"), entryOverhead + 6 + errOverhead + 12},
	}
	for _, tt := range tests {
		if got := entrySize(tt.name, tt.l, tt.err); got != tt.want {
			t.Errorf("entrySize(%s, %d addrs (cap %d), %v) = %d, want %d", tt.name, len(tt.l.Addrs), cap(tt.l.Addrs), tt.err, got, tt.want)
		}
	}
}

// TestCacheRenewsExpired: an expired answer is asked for again and renewed
// in place; the cache does not grow by it.
func TestCacheRenewsExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &perName{ttl: time.Second} // raised to MinTTL
		c := &Cache{Resolver: r}
		ctx := context.Background()
		c.Resolve(ctx, "a.test")
		time.Sleep(MinTTL - time.Millisecond)
		c.Resolve(ctx, "a.test")
		if n := r.count("a.test"); n != 1 {
			t.Errorf("before MinTTL: %d queries, want 1", n)
		}
		time.Sleep(time.Millisecond)
		c.Resolve(ctx, "a.test")
		if n := r.count("a.test"); n != 2 {
			t.Errorf("at MinTTL: %d queries, want 2", n)
		}
		if s := c.Stats(); s.Entries != 1 || s.Bytes != entrySize("a.test", Lookup{Addrs: make([]netip.Addr, 1)}, nil) {
			t.Errorf("Stats() = %+v, want the one entry", s)
		}
	})
}

type instantResolver struct{}

var floodAnswer = Lookup{Addrs: []netip.Addr{netip.AddrFrom4([4]byte{198, 51, 100, 1})}, TTL: time.Hour}

func (instantResolver) Resolve(context.Context, string) (Lookup, error) { return floodAnswer, nil }

// BenchmarkCacheFlood stores unique names into a full cache of 1k, 100k
// and 1M entries: the cost of a store must not grow with the cache (the
// scan this replaced took 10 µs, 1.7 ms and 73 ms).
func BenchmarkCacheFlood(b *testing.B) {
	for _, n := range []int{1_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			size := entrySize("f1000000.flood.test", floodAnswer, nil)
			c := &Cache{Resolver: instantResolver{}, MaxBytes: n * size}
			ctx := context.Background()
			for i := range n {
				c.Resolve(ctx, fmt.Sprintf("f%07d.flood.test", i))
			}
			names := make([]string, 1<<16)
			for i := range names {
				names[i] = fmt.Sprintf("n%d.flood.test", i)
			}
			i := 0
			for b.Loop() {
				c.Resolve(ctx, names[i%len(names)]+fmt.Sprint(i>>16))
				i++
			}
			if s := c.Stats(); s.Entries < n*9/10 {
				b.Fatalf("Stats() = %+v, want about %d entries", s, n)
			}
		})
	}
}

// TestCachedOnly checks that a look-up under CachedOnly never asks the
// resolver: a name not cached is ErrNotCached, a cached one is answered.
func TestCachedOnly(t *testing.T) {
	r := &perName{ttl: time.Hour}
	c := &Cache{Resolver: r}
	ctx := CachedOnly(context.Background())
	if _, err := c.Resolve(ctx, "a.test"); !errors.Is(err, ErrNotCached) {
		t.Fatalf("uncached name under CachedOnly: err %v, want ErrNotCached", err)
	}
	if n := r.count("a.test"); n != 0 {
		t.Fatalf("the resolver was asked %d times under CachedOnly", n)
	}
	if _, err := c.Resolve(context.Background(), "a.test"); err != nil {
		t.Fatal(err)
	}
	l, err := c.Resolve(ctx, "a.test")
	if err != nil || len(l.Addrs) != 1 {
		t.Fatalf("cached name under CachedOnly: %v, %v", l, err)
	}
	if n := r.count("a.test"); n != 1 {
		t.Errorf("the resolver was asked %d times, want 1", n)
	}
}

// blockingResolver answers nothing until release is closed, counting the
// look-ups it holds at once.
type blockingResolver struct {
	release   chan struct{}
	mu        sync.Mutex
	now, most int
	started   chan string
}

func (r *blockingResolver) Resolve(ctx context.Context, name string) (Lookup, error) {
	r.mu.Lock()
	r.now++
	r.most = max(r.most, r.now)
	r.mu.Unlock()
	r.started <- name
	<-r.release
	r.mu.Lock()
	r.now--
	r.mu.Unlock()
	return floodAnswer, nil
}

// TestLookupShares: a client that sends connections for unique names
// (under a wildcard it owns, whose servers answer slowly) has egressd
// ask the resolver about each, every look-up holding two sockets while
// it waits. One source may have at most its share of the look-ups in
// flight (past it: ErrBusy at once, not cached), the cache at most
// MaxLookups in all; another source's look-up still goes ahead.
func TestLookupShares(t *testing.T) {
	r := &blockingResolver{release: make(chan struct{}), started: make(chan string, 1000)}
	c := &Cache{Resolver: r, MaxLookups: 8}
	share := limit.SourceShare(8)
	attacker := WithSource(context.Background(), netip.MustParseAddr("10.0.0.66"))
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() {
			_, err := c.Resolve(attacker, fmt.Sprintf("u%d.slow.test", i))
			errs <- err
		})
	}
	for range share {
		<-r.started
	}
	// Every look-up past the share is refused without waiting.
	busy := 0
	for range 100 - share {
		select {
		case err := <-errs:
			if errors.Is(err, ErrBusy) {
				busy++
			}
		case <-time.After(10 * time.Second):
			close(r.release)
			t.Fatalf("%d look-ups past one source's share answered, the rest still wait: want ErrBusy at once", busy)
		}
	}
	if busy != 100-share {
		t.Errorf("%d of the %d look-ups past one source's share were ErrBusy", busy, 100-share)
	}
	// Another source gets the places left.
	other := WithSource(context.Background(), netip.MustParseAddr("10.0.0.7"))
	done := make(chan error, 1)
	go func() { _, err := c.Resolve(other, "quiet.test"); done <- err }()
	if name := <-r.started; name != "quiet.test" {
		t.Fatalf("the resolver was asked about %q, want quiet.test", name)
	}
	// MaxLookups in all: more sources wait for a place (here, until the
	// caller gives up).
	for i := range 4 {
		ctx, cancel := context.WithTimeout(WithSource(context.Background(), netip.AddrFrom4([4]byte{10, 1, 0, byte(i)})), 200*time.Millisecond)
		defer cancel()
		wg.Go(func() { c.Resolve(ctx, fmt.Sprintf("w%d.test", i)) })
	}
	<-r.started                       // the one place left
	time.Sleep(50 * time.Millisecond) // the other three try meanwhile
	r.mu.Lock()
	if r.now > 8 {
		t.Errorf("%d look-ups at the resolver at once, want at most MaxLookups (8)", r.now)
	}
	r.mu.Unlock()
	close(r.release)
	wg.Wait()
	if err := <-done; err != nil {
		t.Errorf("the other source's look-up: %v", err)
	}
	if r.most > 8 {
		t.Errorf("%d look-ups at the resolver at once, want at most MaxLookups (8)", r.most)
	}
	// A busy refusal is not cached: the name resolves once places are free.
	if _, err := c.Resolve(attacker, fmt.Sprintf("u%d.slow.test", 99)); err != nil {
		t.Errorf("a name refused as busy before: %v", err)
	}
}
