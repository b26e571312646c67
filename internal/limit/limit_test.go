package limit

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPerSource(t *testing.T) {
	var s PerSource
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for i := range 3 {
		if !s.Acquire(a, 3) {
			t.Fatalf("Acquire(a, 3) #%d refused", i+1)
		}
	}
	if s.Acquire(a, 3) {
		t.Error("Acquire(a, 3) #4 allowed, want refused at the cap")
	}
	if !s.Acquire(b, 3) {
		t.Error("Acquire(b, 3) refused: a's count held b back")
	}
	s.Release(a)
	if got := s.Open(a); got != 2 {
		t.Errorf("Open(a) = %d after a release, want 2", got)
	}
	if !s.Acquire(a, 3) {
		t.Error("Acquire(a, 3) refused after a release")
	}
	for range 3 {
		s.Release(a)
	}
	if got := s.Open(a); got != 0 {
		t.Errorf("Open(a) = %d after every release, want 0", got)
	}
}

// TestPerSourceConcurrent: goroutines of one source never hold more than
// the cap at once, and every count is given back.
func TestPerSourceConcurrent(t *testing.T) {
	var s PerSource
	a := netip.MustParseAddr("2001:db8::1")
	const most = 5
	var held, over atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			for range 200 {
				if !s.Acquire(a, most) {
					continue
				}
				if held.Add(1) > most {
					over.Add(1)
				}
				held.Add(-1)
				s.Release(a)
			}
		})
	}
	wg.Wait()
	if over.Load() > 0 || s.Open(a) != 0 {
		t.Errorf("%d times over the cap of %d, %d left open; want none of either", over.Load(), most, s.Open(a))
	}
}

func TestEverySecond(t *testing.T) {
	var e EverySecond
	t0 := time.Unix(1000, 0)
	for _, tt := range []struct {
		at   time.Duration
		want bool
	}{
		{0, true},
		{10 * time.Millisecond, false},
		{999 * time.Millisecond, false},
		{time.Second, true},
		{1500 * time.Millisecond, false},
		{5 * time.Second, true},
		{5*time.Second + 10*time.Millisecond, false},
		// The clock set back an hour: not an hour of silence.
		{-time.Hour, true},
		{-time.Hour + 10*time.Millisecond, false},
		{-time.Hour + 2*time.Second, true},
	} {
		if got := e.Allow(t0.Add(tt.at)); got != tt.want {
			t.Errorf("Allow(t0+%v) = %v, want %v", tt.at, got, tt.want)
		}
	}
}

// TestSourceGroupsIPv6By64: one host may hold a whole IPv6 /64 (SLAAC
// privacy addresses, a container runtime's range) and would get a share
// per address; it counts as one source, an IPv4 address as itself, and
// an IPv4-mapped IPv6 address as its IPv4 address.
func TestSourceGroupsIPv6By64(t *testing.T) {
	var s PerSource
	a, b := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:2:ffff:ffff:ffff:fffe")
	other := netip.MustParseAddr("2001:db8:1:3::1")
	if !s.Acquire(a, 2) || !s.Acquire(b, 2) {
		t.Fatal("two of a share of 2 refused")
	}
	if s.Acquire(netip.MustParseAddr("2001:db8:1:2::99"), 2) {
		t.Error("a third address of the same /64 got a place past the share of 2")
	}
	if !s.Acquire(other, 2) {
		t.Error("another /64 was refused")
	}
	if got := s.Open(a); got != 2 {
		t.Errorf("Open(%s) = %d, want 2: the /64's", a, got)
	}
	s.Release(b)
	if got := s.Open(a); got != 1 {
		t.Errorf("after a release from another address of the /64, Open = %d, want 1", got)
	}
	v4, mapped := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("::ffff:192.0.2.1")
	if !s.Acquire(v4, 1) || s.Acquire(mapped, 1) || s.Acquire(v4, 1) {
		t.Error("an IPv4 address and its mapped form are not one source with a share of 1")
	}
	if !s.Acquire(netip.MustParseAddr("192.0.2.2"), 1) {
		t.Error("IPv4 addresses are grouped; want each its own source")
	}
}
