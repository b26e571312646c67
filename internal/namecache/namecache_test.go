package namecache

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

var (
	cliA = netip.MustParseAddr("10.0.0.1")
	cliB = netip.MustParseAddr("10.0.0.2")
	ip1  = netip.MustParseAddr("198.51.100.10")
	ip2  = netip.MustParseAddr("198.51.100.20")
)

// clock is a settable time for the cache under test.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTestCache(max int) (*Cache, *clock) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := New(max, 0)
	c.now = clk.now
	return c, clk
}

func TestLookupIsPerClient(t *testing.T) {
	c, _ := newTestCache(0)
	c.Record(cliA, "git.example.test", ip1, time.Minute)
	tests := []struct {
		src, dst netip.Addr
		want     string
	}{
		{cliA, ip1, "git.example.test"},
		{cliB, ip1, ""}, // another client never borrows A's name
		{cliA, ip2, ""},
		{netip.MustParseAddr("::ffff:10.0.0.1"), ip1, "git.example.test"}, // dual-stack socket view of A
	}
	for _, tt := range tests {
		got, ok := c.Lookup(tt.src, tt.dst)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("Lookup(%v, %v) = %q, %v; want %q", tt.src, tt.dst, got, ok, tt.want)
		}
	}
}

func TestMostRecentNameWins(t *testing.T) {
	c, clk := newTestCache(0)
	c.Record(cliA, "a.example.test", ip1, time.Minute)
	clk.t = clk.t.Add(time.Second)
	c.Record(cliA, "b.example.test", ip1, time.Minute)
	if got, _ := c.Lookup(cliA, ip1); got != "b.example.test" {
		t.Errorf("Lookup after a then b = %q, want b.example.test", got)
	}
	clk.t = clk.t.Add(time.Second)
	c.Record(cliA, "a.example.test", ip1, time.Minute) // refreshed: most recent again
	if got, _ := c.Lookup(cliA, ip1); got != "a.example.test" {
		t.Errorf("Lookup after a refreshed = %q, want a.example.test", got)
	}
	for _, name := range []string{"a.example.test", "b.example.test"} {
		if !c.Resolved(cliA, name, ip1) {
			t.Errorf("Resolved(A, %s, ip1) = false, want true", name)
		}
	}
	if c.Resolved(cliB, "a.example.test", ip1) {
		t.Errorf("Resolved(B, a.example.test, ip1) = true, want false: B resolved nothing")
	}
}

func TestExpiry(t *testing.T) {
	c, clk := newTestCache(0)
	c.Record(cliA, "short.test", ip1, 10*time.Second)
	clk.t = clk.t.Add(9 * time.Second)
	if _, ok := c.Lookup(cliA, ip1); !ok {
		t.Fatalf("Lookup before expiry: not found")
	}
	clk.t = clk.t.Add(time.Second)
	if got, ok := c.Lookup(cliA, ip1); ok {
		t.Errorf("Lookup at expiry = %q, want nothing", got)
	}
	if s := c.Stats(); s.Entries != 0 || s.Expired != 1 {
		t.Errorf("Stats() = %+v, want 0 entries, 1 expired", s)
	}
}

func TestCapEvictsOldest(t *testing.T) {
	c, clk := newTestCache(3)
	client := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	for i := range 5 {
		clk.t = clk.t.Add(time.Second)
		c.Record(client(i), fmt.Sprintf("n%d.test", i), netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), time.Hour)
	}
	s := c.Stats()
	if s.Entries != 3 || s.Evictions != 2 {
		t.Errorf("Stats() = %+v, want 3 entries, 2 evictions", s)
	}
	for i := range 5 {
		_, ok := c.Lookup(client(i), netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}))
		if want := i >= 2; ok != want {
			t.Errorf("Lookup(n%d) found = %v, want %v (the two oldest are evicted)", i, ok, want)
		}
	}
}

// TestOneClientCannotFlushOthers records far more names from one client
// than its share: it loses its own oldest memories, never another
// client's, however recently that client resolved.
func TestOneClientCannotFlushOthers(t *testing.T) {
	for _, tt := range []struct {
		name           string
		total, share   int
		wantShareOfA   int
		wantEvictedOfA int
	}{
		{"default share, a quarter", 8, 0, 2, 18},
		{"configured share", 8, 5, 5, 15},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
			c := New(tt.total, tt.share)
			c.now = clk.now
			c.Record(cliB, "b1.test", ip1, time.Hour)
			c.Record(cliB, "b2.test", ip2, time.Hour)
			for i := range 20 {
				clk.t = clk.t.Add(time.Second)
				c.Record(cliA, fmt.Sprintf("a%d.test", i), netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), time.Hour)
			}
			for _, dst := range []netip.Addr{ip1, ip2} {
				if _, ok := c.Lookup(cliB, dst); !ok {
					t.Errorf("client B lost its name for %s to client A's flood", dst)
				}
			}
			for i := range 20 {
				_, ok := c.Lookup(cliA, netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}))
				if want := i >= 20-tt.wantShareOfA; ok != want {
					t.Errorf("client A's a%d found = %v, want %v (A keeps its newest %d)", i, ok, want, tt.wantShareOfA)
				}
			}
			if s := c.Stats(); s.Entries != 2+tt.wantShareOfA || s.Evictions != uint64(tt.wantEvictedOfA) {
				t.Errorf("Stats() = %+v, want %d entries, %d evictions", s, 2+tt.wantShareOfA, tt.wantEvictedOfA)
			}
		})
	}
}

func TestNamesPerPairBounded(t *testing.T) {
	c, clk := newTestCache(0)
	for i := range maxNamesPerPair + 5 {
		clk.t = clk.t.Add(time.Second)
		c.Record(cliA, fmt.Sprintf("n%d.test", i), ip1, time.Hour)
	}
	if s := c.Stats(); s.Entries != maxNamesPerPair {
		t.Errorf("entries for one (client, IP) = %d, want %d", s.Entries, maxNamesPerPair)
	}
	if got, _ := c.Lookup(cliA, ip1); got != fmt.Sprintf("n%d.test", maxNamesPerPair+4) {
		t.Errorf("Lookup = %q, want the last name recorded", got)
	}
}

func TestRecordIgnoresInvalid(t *testing.T) {
	c, _ := newTestCache(0)
	c.Record(netip.Addr{}, "a.test", ip1, time.Minute)
	c.Record(cliA, "", ip1, time.Minute)
	c.Record(cliA, "a.test", netip.Addr{}, time.Minute)
	c.Record(cliA, "a.test", ip1, 0)
	if s := c.Stats(); s.Entries != 0 {
		t.Errorf("Stats() = %+v after invalid records, want no entries", s)
	}
}

func TestECHConfigured(t *testing.T) {
	c, clk := newTestCache(0)
	c.RecordECH(cliA, "cover.example.test", 7, time.Minute)
	tests := []struct {
		src  netip.Addr
		name string
		id   uint8
		want bool
	}{
		{cliA, "cover.example.test", 7, true},
		{cliA, "cover.example.test", 8, false}, // another config_id: GREASE as far as we know
		{cliA, "other.example.test", 7, false},
		{cliB, "cover.example.test", 7, false}, // B was never handed the config
	}
	for _, tt := range tests {
		if got := c.ECHConfigured(tt.src, tt.name, tt.id); got != tt.want {
			t.Errorf("ECHConfigured(%v, %s, %d) = %v, want %v", tt.src, tt.name, tt.id, got, tt.want)
		}
	}
	if got, ok := c.Lookup(cliA, netip.Addr{}); ok {
		t.Errorf("Lookup with no destination = %q, want nothing", got)
	}
	clk.t = clk.t.Add(time.Minute)
	if c.ECHConfigured(cliA, "cover.example.test", 7) {
		t.Errorf("ECHConfigured after expiry = true")
	}
}

// BenchmarkRecordFull records into a full cache (every Record evicts), and
// reports the heap held per entry.
func BenchmarkRecordFull(b *testing.B) {
	const max = 100_000
	c := New(max, max) // one client, allowed to fill it
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, byte(i >> 16), byte(i >> 8), byte(i)}) }
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range max {
		c.Record(cliA, "name.example.test", addr(i), time.Hour)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perEntry := float64(after.HeapAlloc-before.HeapAlloc) / max
	b.ReportAllocs()
	i := max
	for b.Loop() {
		c.Record(cliA, "name.example.test", addr(i), time.Hour)
		c.Lookup(cliA, addr(i))
		i++
	}
	if s := c.Stats(); s.Entries != max {
		b.Fatalf("entries = %d, want %d", s.Entries, max)
	}
	b.ReportMetric(perEntry, "heapB/entry")
}

// TestShareDropsExpiredAsExpired checks that an entry a client's share
// pushes out, if its time was already up, counts as expired, not evicted.
func TestShareDropsExpiredAsExpired(t *testing.T) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := New(8, 2)
	c.now = clk.now
	c.Record(cliA, "old.test", ip1, time.Second)
	clk.t = clk.t.Add(2 * time.Second)
	c.Record(cliA, "a.test", ip2, time.Hour)
	c.Record(cliA, "b.test", netip.MustParseAddr("198.51.100.30"), time.Hour)
	if s := c.Stats(); s.Entries != 2 || s.Expired != 1 || s.Evictions != 0 {
		t.Errorf("Stats() = %+v, want 2 entries, 1 expired, 0 evictions", s)
	}
}
