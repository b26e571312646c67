package authguard

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// step is one attempt of a scripted client: after waiting wait, src sends
// a right or a wrong password, and the guard must answer want.
type step struct {
	wait  time.Duration
	src   string
	right bool
	want  Result
}

func repeat(n int, s step) []step {
	out := make([]step, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func seq(parts ...[]step) []step {
	var out []step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestGuardBackoff(t *testing.T) {
	const a, b = "192.0.2.1", "192.0.2.2"
	wrong := step{src: a, want: Wrong}
	tests := []struct {
		name  string
		steps []step
	}{
		{"fewer failures than the limit are all checked", seq(
			repeat(4, wrong),
			[]step{{src: a, right: true, want: OK}})},
		{"the fifth failure starts a back-off that refuses even the right password", seq(
			repeat(5, wrong),
			[]step{{src: a, right: true, want: Backoff}, {src: a, want: Backoff}})},
		{"another source is unaffected", seq(
			repeat(5, wrong),
			[]step{{src: b, right: true, want: OK}, {src: b, want: Wrong}, {src: a, right: true, want: Backoff}})},
		{"the back-off ends", seq(
			repeat(5, wrong),
			[]step{{wait: 9 * time.Second, src: a, right: true, want: Backoff},
				{wait: 2 * time.Second, src: a, right: true, want: OK}})},
		{"a failure after a back-off starts the next, twice as long", seq(
			repeat(5, wrong),
			[]step{{wait: 11 * time.Second, src: a, want: Wrong},
				{wait: 19 * time.Second, src: a, right: true, want: Backoff},
				{wait: 2 * time.Second, src: a, right: true, want: OK}})},
		{"back-offs double up to the cap", seq(
			repeat(5, wrong),
			// 10s, then 20, 40, 80, 160, 300 (the cap), 300.
			[]step{{wait: 11 * time.Second, src: a, want: Wrong},
				{wait: 21 * time.Second, src: a, want: Wrong},
				{wait: 41 * time.Second, src: a, want: Wrong},
				{wait: 81 * time.Second, src: a, want: Wrong},
				{wait: 161 * time.Second, src: a, want: Wrong},
				{wait: 299 * time.Second, src: a, want: Backoff},
				{wait: 2 * time.Second, src: a, want: Wrong},
				{wait: 299 * time.Second, src: a, want: Backoff},
				{wait: 2 * time.Second, src: a, right: true, want: OK}})},
		{"a success does not forget the failures", seq(
			// 4 guesses, a login with a password the client knows (its
			// own user's), then the fifth guess starts the back-off.
			repeat(4, wrong),
			[]step{{src: a, right: true, want: OK}, {src: a, want: Wrong},
				{src: a, want: Backoff}, {src: a, right: true, want: Backoff}})},
		{"failures older than the window are forgotten", seq(
			repeat(4, wrong),
			[]step{{wait: 61 * time.Second, src: a, want: Wrong}},
			repeat(3, wrong),
			[]step{{src: a, right: true, want: OK}})},
		{"a quiet source is forgiven after its back-off", seq(
			repeat(5, wrong),
			[]step{{wait: 10*time.Second + 5*time.Minute + time.Second, src: a, want: Wrong}},
			repeat(3, wrong),
			[]step{{src: a, right: true, want: OK}})},
		{"IPv6 sources back off by /64", seq(
			repeat(5, step{src: "2001:db8:1:1::1", want: Wrong}),
			[]step{{src: "2001:db8:1:1::2", right: true, want: Backoff},
				{src: "2001:db8:1:2::1", right: true, want: OK}})},
		{"an IPv4-mapped source is its IPv4 address", seq(
			repeat(5, step{src: "::ffff:192.0.2.1", want: Wrong}),
			[]step{{src: a, right: true, want: Backoff}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g := New(Config{})
				checks := 0
				for i, s := range tt.steps {
					time.Sleep(s.wait)
					before := checks
					got := g.Check(netip.MustParseAddr(s.src), func() bool { checks++; return s.right })
					if got != s.want {
						t.Fatalf("step %d (%+v): Check = %v, want %v", i, s, got, s.want)
					}
					if hashed := checks > before; hashed != (got == OK || got == Wrong) {
						t.Fatalf("step %d: Check = %v but the password was checked: %v", i, got, hashed)
					}
				}
			})
		})
	}
}

// A check that finds every slot taken for SlotWait fails without hashing.
func TestGuardBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := New(Config{Slots: 1, SlotWait: 100 * time.Millisecond})
		release := make(chan struct{})
		done := make(chan Result)
		go func() { done <- g.Check(netip.MustParseAddr("192.0.2.1"), func() bool { <-release; return true }) }()
		synctest.Wait()
		checked := false
		start := time.Now()
		if got := g.Check(netip.MustParseAddr("192.0.2.2"), func() bool { checked = true; return true }); got != Busy || checked {
			t.Errorf("Check with the only slot taken = %v (checked %v), want busy, unchecked", got, checked)
		}
		if waited := time.Since(start); waited != 100*time.Millisecond {
			t.Errorf("busy after %v, want SlotWait (100ms)", waited)
		}
		close(release)
		if got := <-done; got != OK {
			t.Errorf("the check holding the slot = %v, want ok", got)
		}
		if c := g.Counts(); c != (Counts{OK: 1, Busy: 1}) {
			t.Errorf("Counts = %+v, want one ok and one busy", c)
		}
	})
}

// TestGuardSourceShare: one source that opens a connection per request
// with a right password (no failure, so no back-off) has at most
// DefaultPerSource checks running or waiting; past that its checks are
// busy at once. Queued without end, they held the only slot for
// everyone: another source's check waited behind them past SlotWait.
func TestGuardSourceShare(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Long enough a wait for one source's share ahead (32 × 65 ms).
		g := New(Config{Slots: 1, SlotWait: 3 * time.Second})
		var busy atomic.Int64
		var wg sync.WaitGroup
		for range 100 {
			wg.Go(func() {
				if g.Check(netip.MustParseAddr("192.0.2.1"), func() bool {
					time.Sleep(65 * time.Millisecond) // a bcrypt comparison
					return true
				}) == Busy {
					busy.Add(1)
				}
			})
		}
		synctest.Wait()
		if b := busy.Load(); b != 100-DefaultPerSource {
			t.Errorf("%d of 100 checks from one source busy at once, want %d (all past its share)", b, 100-DefaultPerSource)
		}
		if got := g.Check(netip.MustParseAddr("192.0.2.2"), func() bool { return true }); got != OK {
			t.Errorf("another source's check while one source floods = %v, want ok", got)
		}
		wg.Wait()
	})
}

// Attempts from one source that queued for the slots together are not all
// hashed once the source fails: the back-off is checked again with the
// slot held.
func TestGuardConcurrentAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := New(Config{Slots: 2, SlotWait: time.Hour})
		var hashed atomic.Int64
		var wg sync.WaitGroup
		for range 200 {
			wg.Go(func() {
				g.Check(netip.MustParseAddr("192.0.2.1"), func() bool {
					hashed.Add(1)
					time.Sleep(65 * time.Millisecond) // a bcrypt comparison
					return false
				})
			})
		}
		wg.Wait()
		// The fifth failure starts the back-off; the other slot may be
		// hashing one more attempt by then.
		if n := hashed.Load(); n > DefaultFailures+1 {
			t.Errorf("200 concurrent wrong passwords: %d hashed, want at most %d", n, DefaultFailures+1)
		}
		// Past its share (DefaultPerSource running or waiting) a
		// source's attempts are busy at once; the share's end wrong or
		// backing off.
		if c := g.Counts(); c.Wrong+c.Backoff != DefaultPerSource || c.Busy != 200-DefaultPerSource {
			t.Errorf("Counts = %+v, want %d wrong or backoff, the rest busy", c, DefaultPerSource)
		}
	})
}

// The table of sources never grows past MaxSources.
func TestGuardMaxSources(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := New(Config{MaxSources: 100})
		for i := range 1000 {
			src := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
			g.Check(src, func() bool { return false })
		}
		g.mu.Lock()
		n, l := len(g.sources), g.lru.Len()
		g.mu.Unlock()
		if n != 100 || l != 100 {
			t.Errorf("after 1000 failing sources: %d tracked (%d in the list), want 100", n, l)
		}
		// The most recent ones are kept.
		for range 4 {
			g.Check(netip.MustParseAddr("10.0.3.231"), func() bool { return false })
		}
		if got := g.Check(netip.MustParseAddr("10.0.3.231"), func() bool { return true }); got != Backoff {
			t.Errorf("the latest source after 5 failures: %v, want backoff", got)
		}
	})
}

// The start of a back-off is logged once per source per window, and at
// most once a second in all.
func TestGuardLog(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf bytes.Buffer
		g := New(Config{Log: slog.New(slog.NewTextHandler(&buf, nil))})
		fail := func(src string, n int) {
			for range n {
				g.Check(netip.MustParseAddr(src), func() bool { return false })
			}
		}
		fail("192.0.2.1", 5) // logged
		fail("192.0.2.2", 5) // the same second: not logged
		time.Sleep(11 * time.Second)
		fail("192.0.2.1", 1) // second back-off in the window: not logged
		fail("192.0.2.3", 5) // logged
		time.Sleep(time.Minute)
		fail("192.0.2.1", 1) // a window later: logged
		lines := strings.Count(buf.String(), "backing off")
		want := 3
		if lines != want {
			t.Errorf("%d back-off lines, want %d:\n%s", lines, want, buf.String())
		}
		for _, src := range []string{"192.0.2.1", "192.0.2.3"} {
			if !strings.Contains(buf.String(), fmt.Sprintf("src=%s", src)) {
				t.Errorf("no line names %s:\n%s", src, buf.String())
			}
		}
	})
}

func TestResultString(t *testing.T) {
	for r, want := range map[Result]string{OK: "ok", Wrong: "wrong", Backoff: "backoff", Busy: "busy"} {
		if got := r.String(); got != want {
			t.Errorf("Result(%d).String() = %q, want %q", r, got, want)
		}
	}
}
