// Package authguard keeps proxy password checks from being a way to take
// the gateway's CPU.
//
// Passwords are checked with bcrypt, which is slow on purpose (about 65 ms
// of CPU at cost 10). A client that sends wrong passwords in a loop makes
// the gateway spend that much per attempt, and a few such loops slow every
// connection in the process, on every listener. The guard puts two bounds
// on that, neither of which costs a hash to apply:
//
//   - At most Slots checks run at once (by default half the CPUs Go may
//     use, at least one). A check that cannot get a slot within SlotWait
//     fails without hashing ("busy"): password checks can take at most
//     those CPUs, whoever sends them.
//   - A source address that fails Failures times within Window is refused
//     without hashing for a back-off (Backoff at first). Once a source has
//     backed off, each failure after a back-off ends starts the next one,
//     twice as long, up to MaxBackoff. A quiet MaxBackoff after its
//     back-off ended forgets the source. A success does not: a client
//     that knows one password (its own) would otherwise clear its count
//     between guesses at another user's, and guess without end.
//
// While a source backs off, even its correct password is refused: if it
// were checked, a brute force would learn from the answer, and the back-off
// would gain nothing. Other sources are not affected, but clients behind
// one address (a NAT) share its back-off. IPv6 sources are tracked by /64,
// the block one host usually holds.
//
// Memory is bounded: at most MaxSources sources are tracked, the one seen
// least recently is forgotten first, and each check is O(1).
package authguard

import (
	"container/list"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/internal/limit"
)

// Result is how a check ended.
type Result uint8

const (
	OK      Result = iota // the password was checked and is right
	Wrong                 // the password was checked and is wrong
	Backoff               // refused unchecked: the source is backing off
	Busy                  // refused unchecked: no check slot within SlotWait
)

// String returns the result as the metric's label says it.
func (r Result) String() string {
	switch r {
	case OK:
		return "ok"
	case Wrong:
		return "wrong"
	case Backoff:
		return "backoff"
	}
	return "busy"
}

// Defaults of Config's zero fields. A check waits up to a second for a
// slot: about 15 comparisons at cost 10 per slot, room for a burst of
// legitimate logins, while a flood of them is refused rather than queued.
// Five failures a minute allow for typos; the back-offs (10 s doubling to
// 5 min) leave a brute force about one guess per five minutes per source.
const (
	DefaultSlotWait   = time.Second
	DefaultFailures   = 5
	DefaultWindow     = time.Minute
	DefaultBackoff    = 10 * time.Second
	DefaultMaxBackoff = 5 * time.Minute
	DefaultMaxSources = 65536
	// DefaultPerSource bounds one source's checks running or waiting for
	// a slot: a browser opens up to 32 connections to a proxy at once
	// (Chromium's limit per proxy), each with its credentials, and a
	// source that opens many more (a right password never backs off)
	// must not queue in front of everyone else.
	DefaultPerSource = 32
)

// Config tunes a Guard; zero fields take the defaults above (Slots:
// max(1, GOMAXPROCS/2) when New runs).
type Config struct {
	Slots      int
	SlotWait   time.Duration
	Failures   int
	Window     time.Duration
	Backoff    time.Duration
	MaxBackoff time.Duration
	MaxSources int
	// Log receives one line when a source starts backing off, at most once
	// per source per Window and once a second in all; nil logs nothing.
	Log *slog.Logger
}

// Counts are the results since New.
type Counts struct {
	OK, Wrong, Backoff, Busy uint64
}

// Guard bounds password checks. Its methods are safe for concurrent use.
type Guard struct {
	cfg   Config
	slots chan struct{}

	mu      sync.Mutex
	sources map[netip.Addr]*list.Element // of *source
	lru     list.List                    // front: seen most recently

	inflight   limit.PerSource   // checks running or waiting, by source
	counts     [4]atomic.Uint64  // by Result
	backoffLog limit.EverySecond // the back-off line, once a second at most
}

// source is what the guard remembers of one address (or IPv6 /64).
type source struct {
	key   netip.Addr
	fails int       // failures since start (back-off not yet reached)
	start time.Time // first failure counted in fails
	until time.Time // back-off ends; zero when the source never backed off
	level time.Duration
	seen  time.Time // last attempt
	// logged is when this source's back-off was last logged.
	logged time.Time
}

// New returns a Guard with cfg's zero fields defaulted.
func New(cfg Config) *Guard {
	if cfg.Slots <= 0 {
		// GOMAXPROCS as egressd starts: the relay loops double it later,
		// but the CPUs behind it stay the same.
		cfg.Slots = max(1, runtime.GOMAXPROCS(0)/2)
	}
	if cfg.SlotWait <= 0 {
		cfg.SlotWait = DefaultSlotWait
	}
	if cfg.Failures <= 0 {
		cfg.Failures = DefaultFailures
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.MaxBackoff < cfg.Backoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.Backoff)
	}
	if cfg.MaxSources <= 0 {
		cfg.MaxSources = DefaultMaxSources
	}
	return &Guard{cfg: cfg, slots: make(chan struct{}, cfg.Slots), sources: make(map[netip.Addr]*list.Element)}
}

// Check runs check (the password comparison) for a client at src, unless
// src is backing off or no slot frees within SlotWait, and records the
// result. check must report whether the password is right.
func (g *Guard) Check(src netip.Addr, check func() bool) Result {
	key := limit.Source(src)
	if g.backingOff(key, time.Now()) {
		return g.count(Backoff)
	}
	if !g.inflight.Acquire(key, DefaultPerSource) {
		return g.count(Busy) // its share is queued or running already
	}
	defer g.inflight.Release(key)
	if !g.acquire() {
		return g.count(Busy)
	}
	// Checked again with the slot held: attempts from one source that
	// queued for slots together must not all be hashed once it fails.
	if g.backingOff(key, time.Now()) {
		<-g.slots
		return g.count(Backoff)
	}
	ok := check()
	<-g.slots
	if ok {
		return g.count(OK)
	}
	g.failed(key, time.Now())
	return g.count(Wrong)
}

// BackingOff reports whether src is backing off now: a caller that would
// answer a check from memory (a password found right a moment ago) asks
// first, so that a source backing off is refused whatever it sends.
func (g *Guard) BackingOff(src netip.Addr) bool {
	return g.backingOff(limit.Source(src), time.Now())
}

// Remembered counts an OK that its caller answered without a check (a
// password found right a moment ago), so that the results count every
// answer.
func (g *Guard) Remembered() { g.count(OK) }

// Counts returns the results counted since New.
func (g *Guard) Counts() Counts {
	return Counts{OK: g.counts[OK].Load(), Wrong: g.counts[Wrong].Load(),
		Backoff: g.counts[Backoff].Load(), Busy: g.counts[Busy].Load()}
}

func (g *Guard) count(r Result) Result {
	g.counts[r].Add(1)
	return r
}

// acquire takes a check slot, waiting at most SlotWait.
func (g *Guard) acquire() bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(g.cfg.SlotWait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

// backingOff reports whether key is in a back-off at now.
func (g *Guard) backingOff(key netip.Addr, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	e, ok := g.sources[key]
	if !ok {
		return false
	}
	s := e.Value.(*source)
	if g.stale(s, now) {
		g.lru.Remove(e)
		delete(g.sources, key)
		return false
	}
	return now.Before(s.until)
}

// stale reports whether s has been quiet long enough to be forgotten: a
// Window since its last failure when it never backed off, a MaxBackoff
// after its back-off ended when it did.
func (g *Guard) stale(s *source, now time.Time) bool {
	if s.until.IsZero() {
		return now.Sub(s.start) > g.cfg.Window
	}
	return now.Sub(s.until) > g.cfg.MaxBackoff && now.Sub(s.seen) > g.cfg.MaxBackoff
}

// failed records a wrong password from key at now, and starts a back-off
// when that was one failure too many.
func (g *Guard) failed(key netip.Addr, now time.Time) {
	g.mu.Lock()
	e, ok := g.sources[key]
	var s *source
	if ok && !g.stale(e.Value.(*source), now) {
		s = e.Value.(*source)
		g.lru.MoveToFront(e)
	} else {
		if ok {
			g.lru.Remove(e)
			delete(g.sources, key)
		}
		if g.lru.Len() >= g.cfg.MaxSources {
			old := g.lru.Back()
			g.lru.Remove(old)
			delete(g.sources, old.Value.(*source).key)
		}
		s = &source{key: key, start: now}
		g.sources[key] = g.lru.PushFront(s)
	}
	s.seen = now
	if s.until.IsZero() && now.Sub(s.start) > g.cfg.Window {
		s.fails, s.start = 0, now
	}
	s.fails++
	// A source that backed off before starts the next back-off at its
	// first failure after the last one ended.
	if s.fails < g.cfg.Failures && s.until.IsZero() {
		g.mu.Unlock()
		return
	}
	if s.level == 0 {
		s.level = g.cfg.Backoff
	} else {
		s.level = min(2*s.level, g.cfg.MaxBackoff)
	}
	s.until = now.Add(s.level)
	log := g.cfg.Log != nil && (s.logged.IsZero() || now.Sub(s.logged) >= g.cfg.Window)
	if log {
		s.logged = now
	}
	fails, level := s.fails, s.level
	g.mu.Unlock()
	if !log {
		return
	}
	if g.backoffLog.Allow(now) {
		g.cfg.Log.Warn("proxy authentication: source backing off after repeated failures; its attempts are refused unchecked until then",
			"src", key.String(), "failures", fails, "backoff", level)
	}
}
