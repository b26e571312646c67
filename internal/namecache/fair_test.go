package namecache

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// hostIP is the i-th of many distinct destination addresses.
func hostIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, byte(64 + i>>16&63), byte(i >> 8), byte(i)})
}

// TestFloodKeepsQuietClient: with the default sizes, hostile sources each
// resolve 25,001 unique names, round-robin. A quiet client's 50 earlier
// names all survive, the memory never holds more than max_entries, and the
// heap it takes stays under maxHeapPerEntry a slot: about 300 bytes when
// the memory first fills (BenchmarkRecordFull), up to 612 once millions of
// entries have churned through it, because the pairs map keeps the tables
// it grew to.
func TestFloodKeepsQuietClient(t *testing.T) {
	const perHostile, quietNames = 25_001, 50
	const maxHeapPerEntry = 640 // bytes
	quiet := netip.MustParseAddr("10.1.0.1")
	for _, hostile := range []int{4, 100} {
		t.Run(fmt.Sprintf("%d sources", hostile), func(t *testing.T) {
			c, _ := newTestCache(0) // the config's defaults
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			for i := range quietNames {
				c.Record(quiet, fmt.Sprintf("q%d.example.test", i), hostIP(i), time.Hour)
			}
			for i := range perHostile {
				for h := range hostile {
					src := netip.AddrFrom4([4]byte{10, 2, byte(h >> 8), byte(h)})
					c.Record(src, fmt.Sprintf("x%d.h%d.attacker.test", i, h), hostIP(h*perHostile+i), time.Hour)
					if n := c.Stats().Entries; n > DefaultMax {
						t.Fatalf("%d entries, want at most %d", n, DefaultMax)
					}
				}
			}
			lost := 0
			for i := range quietNames {
				if got, ok := c.Lookup(quiet, hostIP(i)); !ok || got != fmt.Sprintf("q%d.example.test", i) {
					lost++
				}
			}
			if lost > 0 {
				t.Errorf("the quiet client lost %d of its %d names", lost, quietNames)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			s := c.Stats()
			perEntry := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(s.Entries)
			t.Logf("Stats() = %+v; %.0f bytes of heap per entry", s, perEntry)
			if perEntry > maxHeapPerEntry {
				t.Errorf("%.0f bytes of heap per entry, want at most %d", perEntry, maxHeapPerEntry)
			}
			runtime.KeepAlive(c)
		})
	}
}

// TestFairShareGuarantee checks the package's guarantee on random runs: a
// Record by one client never takes another below floor(max / A) entries,
// A being the clients that hold memory when it is made, and what a client
// keeps is always its most recent names. Names and addresses are unique
// and nothing expires, so only the cap evicts.
func TestFairShareGuarantee(t *testing.T) {
	for _, tt := range []struct{ max, clients, steps int }{
		{10, 3, 2000},
		{37, 12, 3000},
		{64, 5, 3000},
		{8, 20, 2000}, // more clients than entries: the floor is 0
	} {
		t.Run(fmt.Sprintf("max %d, %d clients", tt.max, tt.clients), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tt.max), uint64(tt.clients)))
			c, _ := newTestCache(tt.max)
			c.perClient = tt.max // the share cap would evict on its own; take it away
			type rec struct {
				name string
				ip   netip.Addr
			}
			hist := make([][]rec, tt.clients) // each client's records, oldest first
			src := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 3, 0, byte(i)}) }
			// held returns how many of client i's newest records are in the
			// cache, checking they are a suffix of its history.
			held := func(i int) int {
				h := hist[i]
				n := 0
				for n < len(h) && n <= tt.max {
					r := h[len(h)-1-n]
					if got, ok := c.Lookup(src(i), r.ip); !ok || got != r.name {
						break
					}
					n++
				}
				for j := n + 1; j < len(h) && j <= tt.max+1; j++ {
					r := h[len(h)-1-j]
					if _, ok := c.Lookup(src(i), r.ip); ok {
						t.Fatalf("client %d holds %s but not its newer %s: not its most recent names", i, r.name, h[len(h)-1-n].name)
					}
				}
				return n
			}
			for step := range tt.steps {
				before := make([]int, tt.clients)
				a := 0
				for i := range tt.clients {
					if before[i] = held(i); before[i] > 0 {
						a++
					}
				}
				x := rng.IntN(tt.clients)
				if before[x] == 0 {
					a++
				}
				r := rec{fmt.Sprintf("s%d.c%d.test", step, x), hostIP(step)}
				if h := hist[x]; len(h) > 0 && rng.IntN(4) == 0 {
					// Refresh one of x's names: it becomes x's newest.
					k := len(h) - 1 - rng.IntN(min(len(h), before[x]+1))
					r = h[k]
					hist[x] = append(h[:k:k], h[k+1:]...)
				}
				c.Record(src(x), r.name, r.ip, time.Hour)
				hist[x] = append(hist[x], r)
				floor := tt.max / a
				total := 0
				for i := range tt.clients {
					n := held(i)
					total += n
					if i != x && n < min(before[i], floor) {
						t.Fatalf("step %d: client %d recorded and took client %d from %d entries to %d; floor(%d/%d) = %d", step, x, i, before[i], n, tt.max, a, floor)
					}
				}
				if held(x) == 0 {
					t.Fatalf("step %d: client %d's new record is not held", step, x)
				}
				if s := c.Stats(); total != s.Entries || s.Entries > tt.max {
					t.Fatalf("step %d: clients hold %d entries, Stats() = %+v, max %d", step, total, s, tt.max)
				}
			}
		})
	}
}

// TestOneHostOneShare: a host that records its names from many addresses
// of its IPv6 /64 counts as one client for the shares: counted per
// address, it made the fair share of every client tiny, and the quiet
// client, now holding the most, lost its names.
func TestOneHostOneShare(t *testing.T) {
	c, _ := newTestCache(1000)
	quiet := netip.MustParseAddr("10.0.0.7")
	for i := range 50 {
		c.Record(quiet, fmt.Sprintf("q%d.test", i), netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), time.Hour)
	}
	base := netip.MustParseAddr("2001:db8:1:2::").As16()
	for i := range 2000 {
		a := base
		a[14], a[15] = byte(i>>8), byte(i)
		c.Record(netip.AddrFrom16(a), fmt.Sprintf("f%d.test", i), netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), time.Hour)
	}
	kept := 0
	for i := range 50 {
		if _, ok := c.Lookup(quiet, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})); ok {
			kept++
		}
	}
	if kept != 50 {
		t.Errorf("the quiet client kept %d of its 50 names while one /64 recorded 2,000", kept)
	}
}
