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
// The cache is bounded, and fair to the clients that share it: at most max
// entries, at most perClient of them (a quarter by default) for any one
// client, at most 16 names per (client, IP). When a new entry takes the
// cache past max, the entry that goes is the oldest of the recording client
// if it holds more than its fair share, ceil((max+1) / A) with A the
// clients holding entries, and otherwise the oldest of the client holding
// the most. The guarantee: a client holding floor(max / A) entries or fewer
// never loses one to make room for anyone, so each client keeps at least its
// floor(max / A) most recent names (or all it has, if fewer) whatever the
// other clients do; only TTLs and the client's own newer names push them
// out. Every operation is O(1) (16 names per pair at most). It does no
// network I/O.
package namecache

import (
	"net/netip"
	"sync"
	"time"

	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/limit"
)

// DefaultMax is the entry cap when New is given 0: the config's default
// max_entries.
const DefaultMax = config.DefaultMaxEntries

// maxNamesPerPair bounds how many names one client may have for one IP
// (shared hosting, CDNs); beyond it the oldest is dropped first.
const maxNamesPerPair = 16

// Stats are the cache's counters since New.
type Stats struct {
	Entries   int    // live entries (some may have expired and not been swept yet)
	Clients   int    // source addresses holding entries
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
	client   *client
	// Links in the Cache's recording order and in the client's, older
	// toward the front.
	prev, next   *entry
	cprev, cnext *entry
}

// client is one source address's memory: its entries, least recently
// recorded first, and its place among the clients holding as many.
type client struct {
	src            netip.Addr
	n              int
	oldest, newest *entry
	prev, next     *client // in Cache.byCount[n]
}

// clients is a FIFO of the clients that hold one number of entries.
type clients struct{ head, tail *client }

// Cache is the per-client IP → name memory. It is safe for concurrent use.
type Cache struct {
	max, perClient int
	now            func() time.Time

	mu             sync.Mutex
	pairs          map[pair][]*entry
	oldest, newest *entry // every entry, least recently recorded first
	n              int    // entries
	clients        map[netip.Addr]*client
	byCount        []clients // byCount[k]: the clients holding k entries, in the order they came to k
	most           int       // the most entries a client holds
	stats          Stats
}

// New returns an empty cache holding at most total entries, at most
// perClient of them for one client (never more than total). A zero (or
// negative) value means the config's default: DefaultMax, and
// config.DefaultMaxEntriesPerClient of total.
func New(total, perClient int) *Cache {
	if total <= 0 {
		total = DefaultMax
	}
	if perClient <= 0 {
		perClient = config.DefaultMaxEntriesPerClient(total)
	}
	return &Cache{max: total, perClient: min(perClient, total), now: time.Now,
		pairs: make(map[pair][]*entry), clients: make(map[netip.Addr]*client)}
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
			c.unlink(e)
			c.link(e)
			return
		}
	}
	if len(es) >= maxNamesPerPair {
		c.drop(oldest(es), now)
	}
	// Shares are a source's (limit.Source: an IPv6 /64 is one), while
	// the memory stays each address's own.
	src := limit.Source(k.src)
	cl := c.clients[src]
	if cl == nil {
		cl = &client{src: src}
		c.clients[src] = cl
	}
	e := &entry{pair: k, name: name, echID: echID, expires: now.Add(ttl), recorded: now, client: cl}
	c.link(e)
	c.pairs[k] = append(c.pairs[k], e)
	// Sweep a few expired entries from the old end, so that memory follows
	// the live set and not only the cap.
	for i := 0; i < 4 && c.oldest != nil && !now.Before(c.oldest.expires); i++ {
		c.drop(c.oldest, now)
	}
	if cl.n > c.perClient {
		// Past its share, a client pays with its own oldest memory.
		c.drop(cl.oldest, now)
	}
	if c.n > c.max {
		c.drop(c.victim(cl).oldest, now)
	}
}

// victim is the client that gives up its oldest entry when cl's new one
// takes the memory past max: cl itself if it holds more than its fair
// share, ceil((max+1) / A) with A the clients holding entries, and
// otherwise the client holding the most (of those, the first to hold that
// many). Either holds more than floor(max / A) entries, since the max+1
// entries cannot all sit with clients holding that many or fewer: so a
// client at or under floor(max / A) never loses one to make room. Callers
// hold mu.
func (c *Cache) victim(cl *client) *client {
	a := len(c.clients)
	if fair := (c.n + a - 1) / a; cl.n > fair {
		return cl
	}
	return c.byCount[c.most].head
}

// drop removes e, counting it as expired or evicted. Callers hold mu.
func (c *Cache) drop(e *entry, now time.Time) {
	if now.Before(e.expires) {
		c.stats.Evictions++
	} else {
		c.stats.Expired++
	}
	c.remove(e)
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

// remove drops e from the orders and from its pair. Callers hold mu.
func (c *Cache) remove(e *entry) {
	c.unlink(e)
	if e.client.n == 0 {
		delete(c.clients, e.client.src)
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

// link makes e the newest entry, of the cache and of its client, and
// counts it. Callers hold mu.
func (c *Cache) link(e *entry) {
	e.prev, e.next = c.newest, nil
	if c.newest != nil {
		c.newest.next = e
	} else {
		c.oldest = e
	}
	c.newest = e
	cl := e.client
	e.cprev, e.cnext = cl.newest, nil
	if cl.newest != nil {
		cl.newest.cnext = e
	} else {
		cl.oldest = e
	}
	cl.newest = e
	c.n++
	c.recount(cl, +1)
}

// unlink takes e out of both orders and uncounts it. Callers hold mu.
func (c *Cache) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		c.oldest = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		c.newest = e.prev
	}
	cl := e.client
	if e.cprev != nil {
		e.cprev.cnext = e.cnext
	} else {
		cl.oldest = e.cnext
	}
	if e.cnext != nil {
		e.cnext.cprev = e.cprev
	} else {
		cl.newest = e.cprev
	}
	e.prev, e.next, e.cprev, e.cnext = nil, nil, nil, nil
	c.n--
	c.recount(cl, -1)
}

// recount moves cl from the clients holding cl.n entries to those holding
// cl.n+d, d being +1 or -1, and keeps most up to date. Callers hold mu.
func (c *Cache) recount(cl *client, d int) {
	if cl.n > 0 {
		b := &c.byCount[cl.n]
		if cl.prev != nil {
			cl.prev.next = cl.next
		} else {
			b.head = cl.next
		}
		if cl.next != nil {
			cl.next.prev = cl.prev
		} else {
			b.tail = cl.prev
		}
	}
	cl.n += d
	cl.prev, cl.next = nil, nil
	if cl.n > 0 {
		for len(c.byCount) <= cl.n {
			c.byCount = append(c.byCount, clients{})
		}
		b := &c.byCount[cl.n]
		cl.prev = b.tail
		if b.tail != nil {
			b.tail.next = cl
		} else {
			b.head = cl
		}
		b.tail = cl
	}
	c.most = max(c.most, cl.n)
	for c.most > 0 && c.byCount[c.most].head == nil {
		c.most--
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
	s.Entries = c.n
	s.Clients = len(c.clients)
	return s
}
