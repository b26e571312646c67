// Package limit holds the two counters egressd's caps are made of: what
// each source address holds open (connections, queries in flight), and a
// gate that lets a warning about a cap through at most once a second, so
// that a flood does not become a flood of log lines.
package limit

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Source is the key one source counts under: an IPv4 address (given
// plain or IPv4-mapped) is one source, and so is an IPv6 /64, which one
// host may hold whole (SLAAC privacy addresses, a container runtime's
// range) and would otherwise draw a share per address of.
func Source(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// PerSource counts what each source (see Source) holds open. It is
// sharded by source so that sources rarely wait on one another's lock.
// The zero value is ready; it is safe for concurrent use.
type PerSource struct {
	once   sync.Once
	seed   maphash.Seed
	shards [64]shard
}

type shard struct {
	mu sync.Mutex
	m  map[netip.Addr]int32
}

func (s *PerSource) shard(a netip.Addr) *shard {
	s.once.Do(func() { s.seed = maphash.MakeSeed() })
	b := a.As16()
	return &s.shards[maphash.Bytes(s.seed, b[:])%uint64(len(s.shards))]
}

// Acquire counts one more for a unless a holds max already, and reports
// whether it did.
func (s *PerSource) Acquire(a netip.Addr, max int) bool { return s.AcquireN(a, 1, max) }

// Release gives back one that Acquire counted for a.
func (s *PerSource) Release(a netip.Addr) { s.ReleaseN(a, 1) }

// AcquireN counts n more for a (bytes, say) unless that would take a past
// max, and reports whether it did.
func (s *PerSource) AcquireN(a netip.Addr, n, max int) bool {
	a = Source(a)
	sh := s.shard(a)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m == nil {
		sh.m = make(map[netip.Addr]int32)
	}
	if int(sh.m[a])+n > max {
		return false
	}
	sh.m[a] += int32(n)
	return true
}

// ReleaseN gives back n that AcquireN counted for a.
func (s *PerSource) ReleaseN(a netip.Addr, n int) {
	if n == 0 {
		return
	}
	a = Source(a)
	sh := s.shard(a)
	sh.mu.Lock()
	if int(sh.m[a]) <= n {
		delete(sh.m, a)
	} else {
		sh.m[a] -= int32(n)
	}
	sh.mu.Unlock()
}

// SourceShare is how much of total one source may hold: three quarters,
// so that a quarter always stays for everyone else while one busy source
// (a NAT, a node's pods) is not cut short; at least 1, and 0 (no limit)
// when total is.
func SourceShare(total int) int {
	if total <= 0 {
		return 0
	}
	return max(1, total*3/4)
}

// Open returns how many a holds.
func (s *PerSource) Open(a netip.Addr) int {
	a = Source(a)
	sh := s.shard(a)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return int(sh.m[a])
}

// EverySecond lets an event through when none has passed in the second
// before it: a warning logged through it is written at most once a
// second. The zero value is ready; it is safe for concurrent use.
type EverySecond struct {
	last atomic.Int64 // UnixNano of the last event let through
}

// Allow reports whether an event at now may pass, and if so records it. A
// now before the last event's (the wall clock was set back) lets it pass:
// otherwise warnings would be silent for as long as the clock went back.
func (e *EverySecond) Allow(now time.Time) bool {
	t := now.UnixNano()
	last := e.last.Load()
	d := t - last
	return (d >= int64(time.Second) || d < 0) && e.last.CompareAndSwap(last, t)
}
