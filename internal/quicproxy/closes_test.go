package quicproxy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/limit"
)

// TestCloseLimiterSourceShare: one client retransmitting many denied
// flows' Initials gets at most its share of the CONNECTION_CLOSE answers
// a second (an IPv6 /64 counting as one client); another client's denied
// flow is still answered, and the total stays within closesPerSecond.
func TestCloseLimiterSourceShare(t *testing.T) {
	var l closeLimiter
	now := time.Unix(1_700_000_000, 0)
	share := limit.SourceShare(closesPerSecond)
	flood := netip.MustParseAddr("2001:db8:1:2::1")
	got := 0
	for i := range 2 * closesPerSecond {
		a := flood.As16()
		a[15] = byte(i) // other addresses of the same /64
		if l.allow(now, netip.AddrFrom16(a)) {
			got++
		}
	}
	if got != share {
		t.Errorf("one source was answered %d times in a second, want its share %d", got, share)
	}
	if !l.allow(now, netip.MustParseAddr("192.0.2.7")) {
		t.Error("another source's denied flow got no answer while one source flooded")
	}
	for i := range closesPerSecond {
		l.allow(now, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}))
	}
	if l.n != closesPerSecond {
		t.Errorf("%d answers in a second, want at most %d", l.n, closesPerSecond)
	}
	if !l.allow(now.Add(time.Second), flood) {
		t.Error("the next second's answers were refused")
	}
}
