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
