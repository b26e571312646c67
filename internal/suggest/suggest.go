// Package suggest turns what egressd saw into a policy that allows it, and
// replays what it saw through a policy to tell what that policy would
// change.
//
// Nobody writes an egress allow-list from memory: an operator runs egressd
// in report-only mode, lets the workloads do what they do, and then wants
// the rules that allow exactly that and deny the rest. The access log
// holds every connection; this package reads it (Read), groups what was
// seen into rules (Builder), writes them in egressd's YAML (Render), and
// replays the log through a proposed or current policy with the
// gateway's own decision function (Replayer). It does no network I/O.
//
// The grouping is conservative, since every widening is a connection
// nobody saw: a rule lists the sources that were seen (as the smallest
// CIDRs they share within a subnet, SourceBits) or the users; names are
// written out one by one, and collapsed into "*.domain" only when at least
// Options.Collapse names below one registrable domain were seen (never
// below a public suffix: no "*.com", no "*.co.uk"); ports are those seen.
// A connection that carried no name of its own (SSH, server-first) is
// allowed by the name its client resolved through egressd's DNS, or else
// by its destination address, and only for the protocols seen.
package suggest

import (
	"net/netip"
	"slices"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/policy"
)

// DefaultCollapse is Options.Collapse's usual value: three names below one
// registrable domain (a.example.com, b.example.com, c.example.com) make
// "*.example.com".
const DefaultCollapse = 3

// Options shape the suggestion.
type Options struct {
	// Collapse is how many distinct names below one registrable domain
	// must be seen before they are written as "*.DOMAIN"; 0 never
	// collapses.
	Collapse int
	// Users are the proxy users a rule may list: those of the config the
	// policy goes into (a rule naming a user the config does not define
	// does not load). A connection of another user is grouped by its
	// source address instead.
	Users []string
}

// kind is how a rule recognises a connection's destination.
type kind uint8

const (
	byName    kind = iota // the name the client sent (SNI, Host, CONNECT, SOCKS5)
	byDNSName             // the name the client resolved through egressd's DNS; with protocols
	byAddress             // no name: the destination address; with protocols
)

// seenKey is one kind of connection seen: what, from whom, where.
type seenKey struct {
	kind  kind
	name  string     // normalised name; "" for byAddress
	dst   netip.Addr // byAddress only
	user  string     // the user, "" when grouped by source
	src   netip.Addr // when user is ""
	port  uint16     // 0: unknown
	proto string     // a policy.ProtocolNames entry, "" for byName or a protocol rules cannot name
}

// tally is what a rule's comment says it covers.
type tally struct {
	conns       int
	up, down    int64
	first, last time.Time
}

func (t *tally) add(o tally) {
	if t.conns == 0 || o.first.Before(t.first) {
		t.first = o.first
	}
	if o.last.After(t.last) {
		t.last = o.last
	}
	t.conns += o.conns
	t.up += o.up
	t.down += o.down
}

// Left counts the decided connections a suggestion does not cover.
type Left struct {
	// Undecided lines were not decided by the policy (action none,
	// refused before a decision); no rule changes them.
	Undecided int
	// Restricted connections went to an address egressd dials only when
	// a rule's destinations name it (private, loopback, link-local,
	// metadata): opening those is for a person to write, not for a log
	// to suggest. RestrictedDst holds a few of them.
	Restricted    int
	RestrictedDst []string
	// NoTarget connections had neither a name nor a destination address.
	NoTarget int
	// OtherUsers connections were made by a user the config does not
	// define (Options.Users); they are grouped by source.
	OtherUsers int
}

// Builder collects connections and groups them into rules.
type Builder struct {
	opts       Options
	seen       map[seenKey]*tally
	left       Left
	restricted []netip.AddrPort // Left.RestrictedDst, sorted
	users      map[string]bool
}

// maxRestricted bounds Left.RestrictedDst.
const maxRestricted = 5

// NewBuilder returns an empty Builder.
func NewBuilder(opts Options) *Builder {
	b := &Builder{opts: opts, seen: make(map[seenKey]*tally), users: make(map[string]bool)}
	for _, u := range opts.Users {
		b.users[u] = true
	}
	return b
}

// Left says what was seen but left out so far.
func (b *Builder) Left() Left {
	l := b.left
	l.RestrictedDst = nil
	for _, d := range b.restricted {
		l.RestrictedDst = append(l.RestrictedDst, d.String())
	}
	return l
}

// Add counts one connection, if the policy decided it (Conn.Decided).
func (b *Builder) Add(c *Conn) {
	if !c.Decided() {
		b.left.Undecided++
		return
	}
	b.AddSeen(c)
}

// AddSeen counts one connection whether or not its line shows a policy
// decision: for a caller that picked the connections itself, such as the
// admin page asking what rule would allow a name it saw denied.
func (b *Builder) AddSeen(c *Conn) {
	in := c.Input()
	k := seenKey{port: in.Port}
	switch {
	case in.FQDN != "" && c.FQDNSource == accesslog.FromDNS:
		k.kind, k.name = byDNSName, in.FQDN
	case in.FQDN != "":
		k.kind, k.name = byName, in.FQDN
	case in.Dst.IsValid():
		k.kind, k.dst = byAddress, in.Dst
	default:
		b.left.NoTarget++
		return
	}
	if in.Dst.IsValid() && policy.Restricted(in.Dst) {
		b.left.Restricted++
		// The first few in address order, whatever the order of the lines.
		d := netip.AddrPortFrom(in.Dst, in.Port)
		if i, found := slices.BinarySearchFunc(b.restricted, d, netip.AddrPort.Compare); !found && i < maxRestricted {
			b.restricted = slices.Insert(b.restricted, i, d)[:min(len(b.restricted)+1, maxRestricted)]
		}
		return
	}
	if k.kind != byName && slices.Contains(policy.ProtocolNames, in.Protocol) {
		k.proto = in.Protocol
	}
	switch {
	case in.User != "" && b.users[in.User]:
		k.user = in.User
	case in.User != "":
		b.left.OtherUsers++
		fallthrough
	default:
		k.src = in.Src
	}
	t := b.seen[k]
	if t == nil {
		t = &tally{}
		b.seen[k] = t
	}
	t.add(tally{conns: 1, up: c.BytesUp, down: c.BytesDown, first: c.Time, last: c.Time})
}
