// Package namecache remembers, per client, which names that client resolved
// to which addresses through egressd's DNS forwarder.
//
// It exists so that a connection that carries no name of its own (SSH,
// SMTP, MySQL: no SNI, no Host) can still be decided by FQDN: the name is
// the one this very client most recently resolved to the destination IP.
// Memory is keyed by the client's source address first, so one client's
// look-ups never lend a name to another client's connection to a shared IP
// (the widening Cilium's DNS proxy had, cilium/cilium#31803).
//
// The cache is bounded: at most max entries, the least recently recorded
// evicted first, and at most perClient of them for any one client, so that
// one client resolving names as fast as it may cannot push every other
// client's memories out. It does no network I/O.
package namecache

import (
	"container/list"
	"net/netip"
	"sync"
	"time"
)

// DefaultMax is the entry cap when New is given 0.
const DefaultMax = 100_000

// DefaultPerClient is one client's share of total entries when none is
// given: a quarter, so that no single client can fill the cache.
func DefaultPerClient(total int) int { return max(1, total/4) }

// maxNamesPerPair bounds how many names one client may have for one IP
// (shared hosting, CDNs); beyond it the oldest is dropped first.
const maxNamesPerPair = 16

// Stats are the cache's counters since New.
type Stats struct {
	Entries   int    // live entries (some may have expired and not been swept yet)
	Recorded  uint64 // Record calls that stored or refreshed an entry
	Evictions uint64 // entries dropped because the cap was reached
	Expired   uint64 // entries dropped because their time was up
	Hits      uint64 // Lookup calls that found a name
	Misses    uint64 // Lookup calls that found none
}

// pair is one client and one address it resolved a name to.
type pair struct{ src, ip netip.Addr }

type entry struct {
	pair     pair
	name     string
	echID    int // ECH config_id for RecordECH entries, -1 for names
	expires  time.Time
	recorded time.Time
	elem     *list.Element // in Cache.order
	srcElem  *list.Element // in Cache.bySrc[pair.src]
}

// Cache is the per-client IP → name memory. It is safe for concurrent use.
type Cache struct {
	max, perClient int
	now            func() time.Time

	mu    sync.Mutex
	pairs map[pair][]*entry
	order *list.List                // of *entry, least recently recorded first
	bySrc map[netip.Addr]*list.List // each client's entries, in the same order
	stats Stats
}

// New returns an empty cache holding at most total entries (DefaultMax when
// total <= 0), at most perClient of them for one client (a quarter of
// total when perClient <= 0; never more than total).
func New(total, perClient int) *Cache {
	if total <= 0 {
		total = DefaultMax
	}
	if perClient <= 0 {
		perClient = DefaultPerClient(total)
	}
	return &Cache{max: total, perClient: min(perClient, total), now: time.Now,
		pairs: make(map[pair][]*entry), order: list.New(), bySrc: make(map[netip.Addr]*list.List)}
}

// key normalises addresses the way sockets may report them: an IPv4 client
// of a dual-stack socket shows up as ::ffff:a.b.c.d, and must be the same
// client as a.b.c.d.
func key(src, ip netip.Addr) pair {
	return pair{src.Unmap().WithZone(""), ip.Unmap().WithZone("")}
}

// Record remembers that src resolved name to ip, for ttl from now. Recording
// the same triple again refreshes it: it becomes the most recent name for
// (src, ip) and the last to be evicted. Invalid addresses, an empty name and
// a non-positive ttl are ignored.
func (c *Cache) Record(src netip.Addr, name string, ip netip.Addr, ttl time.Duration) {
	if !src.IsValid() || !ip.IsValid() || name == "" || ttl <= 0 {
		return
	}
	c.record(key(src, ip), name, -1, ttl)
}

// RecordECH remembers that src was handed, in an HTTPS or SVCB answer that
// egressd passed on, an ECH configuration with this public name and
// config_id. An outer ClientHello naming that public name with that
// config_id is then real ECH; anything else with an ECH extension is, as
// far as egressd can know, GREASE.
func (c *Cache) RecordECH(src netip.Addr, publicName string, configID uint8, ttl time.Duration) {
	if !src.IsValid() || publicName == "" || ttl <= 0 {
		return
	}
	c.record(key(src, netip.Addr{}), publicName, int(configID), ttl)
}

// ECHConfigured reports whether RecordECH recorded (and has not expired)
// this public name and config_id for src.
func (c *Cache) ECHConfigured(src netip.Addr, publicName string, configID uint8) bool {
	k := key(src, netip.Addr{})
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.live(k, now) {
		if e.name == publicName && e.echID == int(configID) {
			return true
		}
	}
	return false
}

// record stores or refreshes one entry of pair k.
func (c *Cache) record(k pair, name string, echID int, ttl time.Duration) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Recorded++
	es := c.pairs[k]
	for _, e := range es {
		if e.name == name && e.echID == echID {
			e.expires, e.recorded = now.Add(ttl), now
			c.order.MoveToBack(e.elem)
			c.bySrc[k.src].MoveToBack(e.srcElem)
			return
		}
	}
	if len(es) >= maxNamesPerPair {
		c.remove(oldest(es))
		c.stats.Evictions++
	}
	e := &entry{pair: k, name: name, echID: echID, expires: now.Add(ttl), recorded: now}
	e.elem = c.order.PushBack(e)
	mine := c.bySrc[k.src]
	if mine == nil {
		mine = list.New()
		c.bySrc[k.src] = mine
	}
	e.srcElem = mine.PushBack(e)
	c.pairs[k] = append(c.pairs[k], e)
	if mine.Len() > c.perClient {
		// Past its share, a client pays with its own oldest memory.
		f := mine.Front().Value.(*entry)
		if now.Before(f.expires) {
			c.stats.Evictions++
		} else {
			c.stats.Expired++
		}
		c.remove(f)
	}
	for c.order.Len() > c.max {
		c.remove(c.order.Front().Value.(*entry))
		c.stats.Evictions++
	}
	// Sweep a few expired entries from the old end, so that memory follows
	// the live set and not only the cap.
	for i := 0; i < 4 && c.order.Len() > 0; i++ {
		f := c.order.Front().Value.(*entry)
		if now.Before(f.expires) {
			break
		}
		c.remove(f)
		c.stats.Expired++
	}
}

func oldest(es []*entry) *entry {
	o := es[0]
	for _, e := range es[1:] {
		if e.recorded.Before(o.recorded) {
			o = e
		}
	}
	return o
}

// remove drops e from the order list and from its pair. Callers hold mu.
func (c *Cache) remove(e *entry) {
	c.order.Remove(e.elem)
	if mine := c.bySrc[e.pair.src]; mine != nil {
		mine.Remove(e.srcElem)
		if mine.Len() == 0 {
			delete(c.bySrc, e.pair.src)
		}
	}
	es := c.pairs[e.pair]
	for i, x := range es {
		if x == e {
			es = append(es[:i], es[i+1:]...)
			break
		}
	}
	if len(es) == 0 {
		delete(c.pairs, e.pair)
	} else {
		c.pairs[e.pair] = es
	}
}

// live returns the unexpired entries of k, dropping the expired ones.
// Callers hold mu.
func (c *Cache) live(k pair, now time.Time) []*entry {
	es := c.pairs[k]
	for i := 0; i < len(es); {
		if !now.Before(es[i].expires) {
			c.remove(es[i])
			c.stats.Expired++
			es = c.pairs[k]
			continue
		}
		i++
	}
	return es
}

// Lookup returns the name src most recently resolved to dst, if that memory
// has not expired. Only src's own look-ups count.
func (c *Cache) Lookup(src, dst netip.Addr) (string, bool) {
	if !dst.IsValid() {
		return "", false
	}
	k := key(src, dst)
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var best *entry
	for _, e := range c.live(k, now) {
		if best == nil || !e.recorded.Before(best.recorded) {
			best = e
		}
	}
	if best == nil {
		c.stats.Misses++
		return "", false
	}
	c.stats.Hits++
	return best.name, true
}

// Resolved reports whether src resolved name to dst (and the memory has not
// expired): the check that lets a client's SNI stand without a fresh DNS
// look-up.
func (c *Cache) Resolved(src netip.Addr, name string, dst netip.Addr) bool {
	if !dst.IsValid() {
		return false
	}
	k := key(src, dst)
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.live(k, now) {
		if e.name == name {
			return true
		}
	}
	return false
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries = c.order.Len()
	return s
}
