// Package recent remembers the gateway's latest decisions for the admin
// page: the last connections in a ring, how often each rule decided, and
// the names and sources denied most.
//
// The gateway calls Add for every connection it logs, on its hot path
// (the relay loop's goroutine among others), so Add takes one short lock,
// copies a fixed-size entry and counts; it allocates nothing once a rule
// has been seen, and the memory is bounded whatever the clients send: the
// ring has a fixed size, the top lists a fixed number of slots (the
// space-saving algorithm: a newcomer takes the slot of the least counted,
// inheriting its count, so that a name denied often is never pushed out
// by a crowd of names denied once), and rule counts stop at MaxRules
// names (rule names come from the config, not from clients).
package recent

import (
	"net/netip"
	"sync"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
)

// Sizes of what a Recorder keeps.
const (
	RingSize = 1024  // the last connections
	TopSize  = 64    // denied names, denied sources
	MaxRules = 65536 // rule names counted
)

// Entry is one connection as the page shows it. It holds no reason, no
// header and no password: only what the access log line's fixed fields
// say.
type Entry struct {
	Start      time.Time
	Listener   string
	User       string
	Src        netip.Addr
	Dst        netip.AddrPort
	FQDN       string
	FQDNSource accesslog.NameSource
	Protocol   string
	Rule       string
	Action     accesslog.Action
	Enforced   bool
	BytesUp    int64
	BytesDown  int64
}

// Recorder remembers recent decisions. The zero value is not usable; a
// nil *Recorder records nothing.
type Recorder struct {
	mu    sync.Mutex
	ring  []Entry
	next  uint64 // connections added; ring[next%len] is the oldest
	rules map[string]uint64
	// Connections decided by the default, by action.
	defaults map[accesslog.Action]uint64
	names    top[string]
	sources  top[netip.Addr]
	since    time.Time
}

// New returns an empty Recorder.
func New() *Recorder {
	return &Recorder{
		ring:     make([]Entry, RingSize),
		rules:    make(map[string]uint64),
		defaults: make(map[accesslog.Action]uint64, 3),
		names:    newTop[string](TopSize),
		sources:  newTop[netip.Addr](TopSize),
		since:    time.Now(),
	}
}

// Add records a logged connection. It keeps strings of rec, which are
// never modified once written.
func (r *Recorder) Add(rec *accesslog.Record) {
	if r == nil || rec.Action == "" || rec.Action == accesslog.None {
		return
	}
	src := rec.Src.Addr().Unmap().WithZone("")
	r.mu.Lock()
	r.ring[r.next%uint64(len(r.ring))] = Entry{Start: rec.Start, Listener: rec.Listener, User: rec.User, Src: src,
		Dst: rec.Dst, FQDN: rec.FQDN, FQDNSource: rec.FQDNSource, Protocol: rec.Protocol, Rule: rec.Rule,
		Action: rec.Action, Enforced: rec.Enforced, BytesUp: rec.BytesUp, BytesDown: rec.BytesDown}
	r.next++
	if rec.Rule == "" {
		r.defaults[rec.Action]++
	} else if n, ok := r.rules[rec.Rule]; ok || len(r.rules) < MaxRules {
		r.rules[rec.Rule] = n + 1
	}
	if rec.Action == accesslog.Deny {
		if rec.FQDN != "" {
			r.names.add(rec.FQDN)
		}
		r.sources.add(src)
	}
	r.mu.Unlock()
}

// Snapshot is a copy of what a Recorder holds, for one page.
type Snapshot struct {
	Since    time.Time // when recording started
	Total    uint64    // connections recorded
	Recent   []Entry   // newest first
	Rules    map[string]uint64
	Defaults map[accesslog.Action]uint64
	// Denied names and sources, most first; Count may overstate by up to
	// Over (what the slot's previous holder had), never understate.
	Names   []Count[string]
	Sources []Count[netip.Addr]
}

// Count is one entry of a top list.
type Count[K comparable] struct {
	Key   K
	Count uint64
	Over  uint64
}

// Snapshot copies what r holds.
func (r *Recorder) Snapshot() Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Snapshot{Since: r.since, Total: r.next, Rules: make(map[string]uint64, len(r.rules)),
		Defaults: make(map[accesslog.Action]uint64, len(r.defaults))}
	n := min(r.next, uint64(len(r.ring)))
	for i := range n {
		s.Recent = append(s.Recent, r.ring[(r.next-1-i)%uint64(len(r.ring))])
	}
	for k, v := range r.rules {
		s.Rules[k] = v
	}
	for k, v := range r.defaults {
		s.Defaults[k] = v
	}
	s.Names = r.names.sorted()
	s.Sources = r.sources.sorted()
	return s
}
