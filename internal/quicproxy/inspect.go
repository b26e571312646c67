package quicproxy

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/quic"
)

// verdict is what becomes of one client datagram of a relayed flow.
type verdict uint8

const (
	pass    verdict = iota // relay it
	held                   // kept until a new connection is decided
	dropped                // counted and forgotten
)

// inspectLocked decides one client datagram of a relayed flow. A
// short-header packet passes: it belongs to a connection the server
// already has, unless it has the shape of another protocol (notquic.go).
// Long-header packets are read: a Handshake or 0-RTT packet passes (the
// server cannot open it without the Initial of its connection), an Initial
// passes if the keys of a decided connection open it, and any other
// Initial starts a recheck, unless it is a decided connection's that its
// keys do not open. A client never sends a Retry or Version Negotiation
// packet, and an unknown version is not relayed.
//
// What opening the datagram's Initial packets taught of the decided
// connections (the largest packet number, the bytes of a second hello)
// is kept only if the datagram passes: egressd knows of a connection what
// the server was sent. A packet number the server never saw would make
// egressd's keys read the next small one as another number, and fail; a
// second hello's bytes the server never got would count as checked.
func (r *relay) inspectLocked(d []byte) verdict {
	v := r.judgeLocked(d)
	if v != pass {
		r.undoLocked()
	}
	r.forgetSavedLocked()
	return v
}

func (r *relay) judgeLocked(d []byte) verdict {
	if len(d) == 0 {
		r.f.s.stats.drop(dropMalformed, 1)
		return dropped
	}
	if !hasLongHeader(d) {
		if notQUIC(d) {
			r.f.s.stats.drop(dropNotQUIC, 1)
			return dropped
		}
		return pass
	}
	if _, _, ok := firstInitial(d); ok && len(d) < minInitialDatagram {
		r.f.s.stats.drop(dropShortInitial, 1)
		return dropped
	}
	pkts, err := quic.ParseDatagram(d, r.pkts[:0])
	defer func() { clear(pkts); r.pkts = pkts[:0] }()
	if err != nil || quic.LongPackets(pkts) > quic.MaxCoalesced {
		r.f.s.stats.drop(dropMalformed, 1)
		return dropped
	}
	unknown := false
	t := trial{budget: openBudget(len(r.keys)), last: -1}
	for i := range pkts {
		switch p := &pkts[i]; p.Type {
		case quic.Initial:
			switch r.opensLocked(p, &t) {
			case tooCostly:
				r.f.s.stats.drop(dropMalformed, 1)
				return dropped
			case same:
				p.Type = decidedInitial // not the recheck's to assemble
			case notOpened:
				if r.conns.seen(r.conns.id(p.Version, p.DCID), time.Now()) {
					// A decided connection's, which its keys do not open
					// (a packet number egressd cannot place, a packet
					// altered, or the keys forgotten): the server files it
					// under that connection, whose hello was decided.
					r.f.s.stats.drop(dropMalformed, 1)
					return dropped
				}
				unknown = true
			case changed:
				r.f.s.stats.drop(dropChangedHello, 1)
				if !r.changedNoted {
					r.changedNoted = true
					r.f.rec.Reason += "; Initial packets of the decided connection carried other ClientHello bytes: dropped"
				}
				return dropped
			}
		case quic.ZeroRTT, quic.Handshake, quic.ShortHeader:
		default:
			r.f.s.stats.drop(dropUnknownVersion, 1)
			return dropped
		}
	}
	if !unknown {
		return pass
	}
	return r.recheckLocked(d, pkts)
}

// decidedInitial marks, in inspectLocked's packets, an Initial that a
// decided connection's keys opened: a recheck assembles only the others.
// Fed the whole datagram, it took the first Initial that opens, the
// decided connection's own when a client coalesced one in front, decided
// that allowed hello again, and let the new connection's hello behind it
// through undecided, as often as the client sent the datagram.
const decidedInitial quic.PacketType = 0xff

// opened is what the keys of the decided connections make of an Initial.
type opened uint8

const (
	notOpened opened = iota // no decided connection's: a new connection
	same                    // a decided connection's, its CRYPTO bytes the hello decided
	changed                 // a decided connection's, with other CRYPTO bytes
	tooCostly               // not known: the datagram's opens are spent (openBudget)
)

// openBudget is how many Keys.Open calls a datagram's Initial packets may
// cost on a flow with keys decided connections: twice over the keys. A
// client's datagram carries one connection's packets (RFC 9000 §12.2),
// and after its first Initial, its others open with the keys tried first
// (trial.last); an Initial of a new connection, which no keys open, costs
// one pass over all of them, and a decided connection's packet coalesced
// in front of it (TestCoalescedBehindDecided) at most one more. What is
// past that is no client's, and costs the flow's lock a thousand AES-GCM
// opens where quic.MaxCoalesced lets it: the datagram is dropped instead, as
// malformed, when an Initial would need more. Dropping is safe where
// passing over would not be: an Initial not tried with every key could be
// a decided connection's with another hello.
func openBudget(keys int) int { return 2 * keys }

// trial is what opening a datagram's Initial packets spent and learned.
type trial struct {
	budget int // Keys.Open calls left (openBudget)
	last   int // the r.keys index whose keys opened the datagram's last opened Initial, -1 for none
}

// opensLocked reports whether the keys of a decided connection open p,
// and if so whether its CRYPTO frames agree with the hello decided for
// that connection. Bytes past the hello's end are a second ClientHello,
// after a HelloRetryRequest: held to the first's name (second.go).
//
// Every decided connection's keys may have to be tried: once the server
// has answered, a client's Initial packets carry the server's connection
// ID, under the keys of the one it started with (RFC 9000 §7.2), so the
// connection ID does not say which keys open a packet. It says which are
// likeliest, though, and those are tried first: the keys that opened the
// datagram's previous Initial (a datagram is one connection's), then
// those of the connection the packet's connection ID started (a client's
// Initials before the server answered). The others follow while t's
// budget lasts; when it runs out before p is opened or all were tried,
// opensLocked returns tooCostly.
func (r *relay) opensLocked(p *quic.Packet, t *trial) opened {
	first, second := t.last, -1
	id := r.conns.id(p.Version, p.DCID)
	for i := range r.keys {
		if r.keys[i].id == id {
			second = i
			break
		}
	}
	if second == first {
		second = -1
	}
	for n := -2; n < len(r.keys); n++ {
		i := n
		switch {
		case n == -2:
			i = first
		case n == -1:
			i = second
		case n == first || n == second:
			continue // tried already
		}
		if i < 0 {
			continue
		}
		if t.budget <= 0 {
			return tooCostly
		}
		t.budget--
		k := &r.keys[i]
		r.opens++
		out, pn, err := k.keys.Open(r.plain[:0], p, k.largest)
		if cap(out) > cap(r.plain) {
			r.plain = out[:0]
		}
		if err != nil {
			continue
		}
		t.last = i
		r.conns.seen(k.id, time.Now())
		r.saveLocked(k)
		if !k.sameCrypto(out) {
			return changed
		}
		k.largest = max(k.largest, int64(pn))
		return same
	}
	return notOpened
}

// saved is a decided connection's state before the datagram being
// inspected, to go back to if the datagram is not passed on.
type saved struct {
	k       *knownKeys
	largest int64
	second  bool     // k.second was there
	have    []uint64 // then k.second.have; its array is reused
	filled  int
	checked bool
}

// saveLocked keeps k's state, once a datagram, before it changes.
func (r *relay) saveLocked(k *knownKeys) {
	for i := range r.saved {
		if r.saved[i].k == k {
			return
		}
	}
	if len(r.saved) < cap(r.saved) {
		r.saved = r.saved[:len(r.saved)+1]
	} else {
		r.saved = append(r.saved, saved{})
	}
	e := &r.saved[len(r.saved)-1]
	e.k, e.largest, e.second = k, k.largest, k.second != nil
	if e.second {
		e.have = append(e.have[:0], k.second.have...)
		e.filled, e.checked = k.second.filled, k.second.checked
	}
}

// undoLocked gives the decided connections the state they had before the
// datagram being inspected. A second hello's buffer keeps the bytes that
// came; unmarked, they count as not come.
func (r *relay) undoLocked() {
	for i := range r.saved {
		e := &r.saved[i]
		k := e.k
		k.largest = e.largest
		if !e.second {
			k.second = nil
			continue
		}
		s := k.second
		n := copy(s.have, e.have)
		clear(s.have[n:])
		s.filled, s.checked = e.filled, e.checked
	}
}

func (r *relay) forgetSavedLocked() {
	for i := range r.saved {
		r.saved[i].k = nil
	}
	r.saved = r.saved[:0]
}

// recheck is a connection started on a relayed flow whose Initial packets
// no decided connection's keys open: a client's new ClientHello after a
// Retry, or another connection from the same socket. Its datagrams are
// held until its hello is decided.
type recheck struct {
	asm       quic.Assembler
	held      [][]byte
	heldBytes int
	deadline  time.Time
	deciding  bool
}

// recheckLocked holds d, whose Initial packets (pkts) no decided
// connection opens, for the connection they start; one such connection is
// decided at a time.
func (r *relay) recheckLocked(d []byte, pkts []quic.Packet) verdict {
	f, s := r.f, r.f.s
	now := time.Now()
	c := r.check
	if c != nil && !c.deciding && now.After(c.deadline) {
		s.stats.drop(dropUndecided, len(c.take(s, f.key.src.Addr())))
		r.check, c = nil, nil
	}
	// What is read for the hello is what is held, and so what the server
	// gets if the connection is allowed: a datagram that could not be
	// held is not read.
	if c == nil {
		// Retried: the connection ID after a Retry is the server's, of any
		// length. A new connection with a short one gets no further for
		// it: its name is decided all the same (and servers drop it).
		c = &recheck{deadline: now.Add(f.p.HelloTimeout)}
		c.asm.Retried = true
		if c.add(pkts); c.asm.DCID() == nil {
			s.stats.drop(dropMalformed, 1)
			return dropped
		}
		if !c.hold(s, f.key.src.Addr(), d) {
			return dropped // and c with what it read
		}
		r.check = c
	} else {
		if !c.owns(pkts) {
			s.stats.drop(dropHeldFull, 1) // a third connection: one at a time
			return dropped
		}
		if !c.hold(s, f.key.src.Addr(), d) {
			return dropped
		}
		if !c.deciding {
			c.add(pkts)
		}
	}
	switch c.asm.Status() {
	case quic.Complete:
		if !c.deciding {
			c.deciding = true
			s.wg.Add(1)
			go r.decide(c)
		}
	case quic.Invalid:
		s.stats.drop(dropUndecided, len(c.take(s, f.key.src.Addr())))
		r.check = nil
	}
	return held
}

// add gives c's assembler the Initial packets of pkts that no decided
// connection opened, as AddDatagram would: the first that opens names
// the connection, others of other connections are passed over.
func (c *recheck) add(pkts []quic.Packet) {
	for i := range pkts {
		if p := &pkts[i]; p.Type == quic.Initial {
			if st, _ := c.asm.AddPacket(p); st != quic.NeedMore {
				return
			}
		}
	}
}

// owns reports whether pkts hold an Initial packet of c's connection.
func (c *recheck) owns(pkts []quic.Packet) bool {
	for i := range pkts {
		if p := &pkts[i]; p.Type == quic.Initial && p.Version == c.asm.Version() && string(p.DCID) == string(c.asm.DCID()) {
			return true
		}
	}
	return false
}

func (c *recheck) hold(s *Server, src netip.Addr, d []byte) bool {
	if len(c.held) >= maxHeldPerFlow || c.heldBytes+len(d) > maxHeldBytesPerFlow {
		s.stats.drop(dropHeldFull, 1)
		return false
	}
	if !s.heldBy.AcquireN(src, len(d), maxHeldBytesPerSource) {
		s.stats.drop(dropHeldFull, 1)
		return false
	}
	if s.held.Add(int64(len(d))) > maxHeldBytes {
		s.held.Add(-int64(len(d)))
		s.heldBy.ReleaseN(src, len(d))
		s.stats.drop(dropHeldFull, 1)
		return false
	}
	c.held = append(c.held, append([]byte(nil), d...))
	c.heldBytes += len(d)
	return true
}

func (c *recheck) take(s *Server, src netip.Addr) [][]byte {
	h := c.held
	s.held.Add(-int64(c.heldBytes))
	s.heldBy.ReleaseN(src, c.heldBytes)
	c.held, c.heldBytes = nil, 0
	return h
}

// maxOtherNotes bounds the notes a flow's line takes of its other
// connections' names: a client that starts connection after connection
// must not grow it without end.
const maxOtherNotes = 4

// maxFlowConnections bounds the decided connections whose keys a flow
// keeps: a client that starts connection after connection on one socket
// (a QUIC stack reconnecting, or one opening many to gather a second
// hello's bytes for each, up to 16 KiB apiece) holds at most this many.
// An Initial packet of one forgotten is dropped (decidedConns).
const maxFlowConnections = 32

// decide decides a rechecked connection as a new flow would be, with a
// line of its own when it is refused. It passes only if it is allowed to
// the flow's own server: the flow's socket goes nowhere else.
func (r *relay) decide(c *recheck) {
	f, s := r.f, r.f.s
	defer s.wg.Done()
	rec := accesslog.Record{
		Start: time.Now(), Listener: f.p.Listener, Src: f.key.src, Dst: f.key.orig,
		Protocol: accesslog.ProtocolQUIC, FQDNSource: accesslog.FromNone, Enforced: f.p.Enforce,
	}
	info, ok := parseHello(c.asm.Hello())
	var v Verdict
	if ok {
		v = s.cfg.Decide(s.ctx, &rec, &Hello{Src: f.key.src, Orig: f.key.orig, Info: info})
	} else {
		rec.Action, rec.Reason = accesslog.Deny, "malformed TLS ClientHello in QUIC Initial packets"
	}
	f.mu.Lock()
	if f.st != relaying || r.check != c {
		f.mu.Unlock()
		return // the flow ended; its end dropped what was held
	}
	r.check = nil
	heldDatagrams := c.take(s, f.key.src.Addr())
	full := false
	if ok && v.Allow && v.Dst == r.dst {
		keys, err := quic.ClientInitialKeys(c.asm.Version(), c.asm.DCID())
		id := r.conns.id(c.asm.Version(), c.asm.DCID())
		full = err == nil && !r.conns.add(id, time.Now())
		if err == nil && !full {
			r.keys = slices.DeleteFunc(r.keys, func(k knownKeys) bool { return k.id == id }) // forgotten once, decided again
			if len(r.keys) == maxFlowConnections {
				// The oldest connection's Initials are long over; should
				// one still come, it is dropped (decidedConns).
				copy(r.keys, r.keys[1:])
				r.keys[len(r.keys)-1] = knownKeys{}
				r.keys = r.keys[:len(r.keys)-1]
			}
			r.keys = append(r.keys, knownKeys{id: id, keys: keys, largest: -1, hello: bytes.Clone(c.asm.Hello())})
			switch {
			case rec.FQDN == f.rec.FQDN:
			case r.otherNoted < maxOtherNotes:
				f.rec.Reason += fmt.Sprintf("; another connection on this flow named %q (%s)", rec.FQDN, rec.Reason)
				r.otherNoted++
			case r.otherNoted == maxOtherNotes:
				f.rec.Reason += "; more connections on this flow named other names"
				r.otherNoted++
			}
			for _, d := range heldDatagrams {
				r.forwardLocked(d)
			}
			f.mu.Unlock()
			if rec.Action == accesslog.Deny {
				s.cfg.Logged(&rec) // report-only: a deny let through has its line
			}
			return
		}
	}
	code, phrase := uint64(quic.CodeAccessDenied), denyPhrase(rec.Rule)
	if full {
		code, phrase = codeInternalError, "egressd: too many QUIC connections on this flow"
	}
	var closePkt []byte
	if !f.p.Drop {
		closePkt, _ = c.asm.AppendClose(nil, code, phrase)
	}
	f.mu.Unlock()
	s.stats.drop(dropDenied, len(heldDatagrams))
	if closePkt != nil && s.closes.allow(time.Now(), f.key.src.Addr()) {
		if _, err := r.client.Write(closePkt); err == nil {
			s.stats.closes.Add(1)
		}
	}
	rec.Action, rec.Enforced = accesslog.Deny, true
	switch {
	case full:
		rec.Reason = fmt.Sprintf("%d QUIC connections decided on the flow to %s within %v: refused (%s)", maxDecidedConns, r.dst, forgetAfter, rec.Reason)
	case ok && v.Allow:
		rec.Reason = fmt.Sprintf("a second QUIC connection on the flow to %s names %s, to be relayed to %s: refused (%s)", r.dst, rec.FQDN, v.Dst, rec.Reason)
	}
	rec.Reason += fmt.Sprintf("; on a flow allowed for %q", f.rec.FQDN)
	s.cfg.Logged(&rec)
}
