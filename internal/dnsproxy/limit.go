package dnsproxy

import (
	"net/netip"
	"sync"
	"time"

	"github.com/egressd/egressd/internal/limit"
)

// maxLimitedSources bounds the rate limiter's table. Once this many
// sources are counted in one window, a source not yet counted is let
// through uncounted until the window turns; the sources counted keep
// their limit. Dropping them instead would hand the forwarder to whoever
// fills the table: spoofed UDP sources or the 65,536 /64s of one /48 cost
// an attacker one query each, and would deny DNS to every client not yet
// seen that second. What gets through uncounted is still bounded by the
// in-flight caps (maxInFlight, maxInFlightPerSource), which hold whatever
// the number of sources.
const maxLimitedSources = 65536

// limiter counts queries per source (an IPv4 address, an IPv6 /64: see
// limit.Source) in fixed one-second windows.
// A fixed window is cruder than a token bucket, but its memory is one
// counter per source seen this second and it forgets everyone each second.
type limiter struct {
	perSecond int
	now       func() time.Time

	mu     sync.Mutex
	window time.Time
	counts map[netip.Addr]int
}

func newLimiter(perSecond int) *limiter {
	return &limiter{perSecond: perSecond, now: time.Now, counts: make(map[netip.Addr]int)}
}

// allow counts one query from src and reports whether it is within the
// limit; first reports whether it is the first refused one of this window
// for src, so that a flood is logged once a second, not once a query.
func (l *limiter) allow(src netip.Addr) (ok, first bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now().Truncate(time.Second)
	if !now.Equal(l.window) {
		l.window = now
		clear(l.counts)
	}
	src = limit.Source(src)
	n, seen := l.counts[src]
	if !seen && len(l.counts) >= maxLimitedSources {
		return true, false
	}
	n++
	l.counts[src] = n
	return n <= l.perSecond, n == l.perSecond+1
}
