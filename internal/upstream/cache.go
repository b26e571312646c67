package upstream

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/egressd/egressd/internal/limit"
)

// Cache keeps answers for their TTL (bounded by MinTTL and MaxTTL) and
// failures for NegativeTTL, and lets concurrent lookups of one name share a
// single query.
//
// Its memory is bounded by MaxBytes, each entry counted with its name, its
// addresses and its error, so that a client who owns a wildcard zone and
// asks for unique names as fast as it can cannot grow it. Every operation is
// O(1): a full cache never scans its entries.
//
// Eviction keeps two FIFO queues, as S3-FIFO does. A new entry joins the
// probation queue. An entry that is hit (answers a later lookup) is marked;
// when it reaches the head of probation it moves to the main queue instead of
// going, and the main queue is a CLOCK: a marked entry at its head is
// unmarked and goes round once more. Entries leave probation while it holds
// more than a tenth of MaxBytes, and leave main only when probation holds
// less. So a flood of names asked for once churns probation and never
// evicts a name that has been hit, and a name that is hit at least once per
// pass of the main queue stays for its TTL.
type Cache struct {
	Resolver Resolver
	// MaxBytes bounds the memory the entries hold, as counted by entrySize
	// (DefaultCacheBytes when 0). The heap the cache holds stays within it
	// (TestCacheFloodBounded measures it).
	MaxBytes int
	// MaxLookups bounds the look-ups the resolver is asked at once
	// (DefaultMaxLookups when 0), each holding its sockets while it
	// waits; one source (WithSource) may hold limit.SourceShare of them,
	// and is refused at once (ErrBusy) past it, so that a client asking
	// about unique names whose servers answer slowly cannot take every
	// place. A look-up past MaxLookups waits for a place as long as its
	// caller does.
	MaxLookups int

	slotsOnce sync.Once
	slots     chan struct{}
	bySource  limit.PerSource

	mu        sync.Mutex
	entries   map[string]*entry
	inflight  map[string]*call
	probation queue // new entries, oldest first
	main      queue // entries hit while in probation, in CLOCK order
	stats     CacheStats
}

// DefaultMaxLookups is the Cache's MaxLookups when 0: each look-up holds
// two sockets (its A and AAAA queries) beside its connection's one, and
// the open-files reserve egressd keeps beside its connections is 256 at
// least.
const DefaultMaxLookups = 128

// ErrBusy is Resolve's answer to a source that has its share of the
// look-ups in flight already. It is not cached.
var ErrBusy = errors.New("too many look-ups in flight for this client; try again")

type sourceKey struct{}

// WithSource says whose look-ups Resolve under ctx makes: the client
// address a connection came from, whose share of MaxLookups they count
// against. Without it they count against no share, only MaxLookups.
func WithSource(ctx context.Context, src netip.Addr) context.Context {
	return context.WithValue(ctx, sourceKey{}, src)
}

// acquire takes a place for a look-up by ctx's source: at once or
// ErrBusy for the source's share, waiting for ctx for a place in all.
func (c *Cache) acquire(ctx context.Context) (release func(), err error) {
	c.slotsOnce.Do(func() {
		n := c.MaxLookups
		if n <= 0 {
			n = DefaultMaxLookups
		}
		c.slots = make(chan struct{}, n)
	})
	src, sourced := ctx.Value(sourceKey{}).(netip.Addr)
	if sourced && !c.bySource.Acquire(src, limit.SourceShare(cap(c.slots))) {
		return nil, ErrBusy
	}
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		if sourced {
			c.bySource.Release(src)
		}
		return nil, ctx.Err()
	}
	return func() {
		<-c.slots
		if sourced {
			c.bySource.Release(src)
		}
	}, nil
}

// DefaultCacheBytes is the Cache's memory budget when MaxBytes is 0: about
// 65,000 entries of a name with one or two addresses.
const DefaultCacheBytes = 16 << 20

// TTL bounds for cached answers.
const (
	MinTTL      = 5 * time.Second
	MaxTTL      = 10 * time.Minute
	NegativeTTL = 5 * time.Second
)

// CacheStats are the Cache's counters since it was made.
type CacheStats struct {
	Entries   int    // cached answers, some perhaps expired
	Bytes     int    // their size, as counted against MaxBytes
	Hits      uint64 // lookups answered from the cache
	Misses    uint64 // lookups that asked the resolver (or waited on one that did)
	Evictions uint64 // live entries dropped to stay within MaxBytes
}

type entry struct {
	name    string
	l       Lookup
	err     error
	expires time.Time
	size    int
	hit     bool // looked up since it was stored or last went round
	q       *queue
	next    *entry // toward the tail (newer)
	prev    *entry
}

// Sizes counted for each entry on top of its name's bytes: the entry itself
// and its share of the map (entryOverhead), each address's 24 bytes, and an
// error's value and text. They were set from the heap TestCacheFloodBounded
// measures, and err on the high side.
const (
	entryOverhead = 224
	addrSize      = 24
	errOverhead   = 64
)

func entrySize(name string, l Lookup, err error) int {
	n := entryOverhead + len(name) + cap(l.Addrs)*addrSize
	if err != nil {
		n += errOverhead + len(err.Error())
	}
	return n
}

type call struct {
	done chan struct{}
	l    Lookup
	err  error
}

// knownLocked returns name's live entry (marked as hit), or else the
// look-up of it under way, if any. Callers hold mu.
func (c *Cache) knownLocked(name string) (*entry, *call) {
	if e, ok := c.entries[name]; ok && time.Now().Before(e.expires) {
		e.hit = true
		return e, nil
	}
	return nil, c.inflight[name]
}

// wait is a look-up's answer to a caller that joined it, unless ctx ends
// first.
func (cl *call) wait(ctx context.Context) (Lookup, error) {
	select {
	case <-cl.done:
		return cl.l, cl.err
	case <-ctx.Done():
		return Lookup{}, ctx.Err()
	}
}

// ErrNotCached is Resolve's answer, under CachedOnly, for a name it would
// have to ask the resolver about.
var ErrNotCached = errors.New("not in the look-up cache")

type cachedOnlyKey struct{}

// CachedOnly makes Resolve under ctx answer from the cache only, never
// waiting: for a caller that must not block (a relay loop's goroutine),
// which on ErrNotCached hands the work to one that may.
func CachedOnly(ctx context.Context) context.Context {
	return context.WithValue(ctx, cachedOnlyKey{}, true)
}

// Resolve returns the cached answer or asks the resolver.
func (c *Cache) Resolve(ctx context.Context, name string) (Lookup, error) {
	c.mu.Lock()
	e, cl := c.knownLocked(name)
	switch {
	case e != nil:
		c.stats.Hits++
		c.mu.Unlock()
		return e.l, e.err
	case ctx.Value(cachedOnlyKey{}) != nil:
		c.mu.Unlock()
		return Lookup{}, ErrNotCached
	}
	c.stats.Misses++
	c.mu.Unlock()
	if cl != nil {
		return cl.wait(ctx)
	}
	release, err := c.acquire(ctx)
	if err != nil {
		return Lookup{}, err
	}
	defer release()
	// Another caller may have asked about the name while this one waited
	// for its place.
	c.mu.Lock()
	if e, cl = c.knownLocked(name); e != nil || cl != nil {
		c.mu.Unlock()
		if e != nil {
			return e.l, e.err
		}
		return cl.wait(ctx)
	}
	if c.inflight == nil {
		c.inflight = make(map[string]*call)
		c.entries = make(map[string]*entry)
	}
	cl = &call{done: make(chan struct{})}
	c.inflight[name] = cl
	c.mu.Unlock()

	// The shared query must not die with the first asker's context.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	cl.l, cl.err = c.Resolver.Resolve(qctx, name)
	cancel()
	close(cl.done)

	ttl := min(max(cl.l.TTL, MinTTL), MaxTTL)
	if cl.err != nil {
		ttl = NegativeTTL
	}
	c.mu.Lock()
	delete(c.inflight, name)
	c.storeLocked(name, cl.l, cl.err, time.Now().Add(ttl))
	c.mu.Unlock()
	return cl.l, cl.err
}

// storeLocked caches an answer and evicts until the cache is within its
// budget. An expired entry of the same name is renewed where it stands, and
// marked as hit: it was asked for again, so it is no stranger to the cache.
func (c *Cache) storeLocked(name string, l Lookup, err error, expires time.Time) {
	size := entrySize(name, l, err)
	if e, ok := c.entries[name]; ok {
		e.q.bytes += size - e.size
		e.l, e.err, e.expires, e.size, e.hit = l, err, expires, size, true
	} else {
		e = &entry{name: name, l: l, err: err, expires: expires, size: size}
		c.entries[name] = e
		c.probation.push(e)
	}
	c.evictLocked(time.Now())
}

// evictLocked drops entries until the cache is within MaxBytes. Each pass
// of the loop drops an entry or unmarks one, and only a hit marks one, so
// a store costs O(1) amortised.
func (c *Cache) evictLocked(now time.Time) {
	limit := c.MaxBytes
	if limit <= 0 {
		limit = DefaultCacheBytes
	}
	for c.probation.bytes+c.main.bytes > limit {
		q := &c.main
		if c.probation.bytes > limit/10 || c.main.head == nil {
			q = &c.probation
		}
		e := q.head
		q.remove(e)
		live := now.Before(e.expires)
		if e.hit && live {
			e.hit = false
			c.main.push(e) // promoted from probation, or once more round main
			continue
		}
		delete(c.entries, e.name)
		if live {
			c.stats.Evictions++
		}
	}
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries = len(c.entries)
	s.Bytes = c.probation.bytes + c.main.bytes
	return s
}

// queue is a doubly linked FIFO of entries that knows their total size.
type queue struct {
	head, tail *entry
	bytes      int
}

func (q *queue) push(e *entry) {
	e.q, e.prev, e.next = q, q.tail, nil
	if q.tail != nil {
		q.tail.next = e
	} else {
		q.head = e
	}
	q.tail = e
	q.bytes += e.size
}

func (q *queue) remove(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		q.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		q.tail = e.prev
	}
	e.prev, e.next, e.q = nil, nil, nil
	q.bytes -= e.size
}
