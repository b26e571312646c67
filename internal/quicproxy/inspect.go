package quicproxy

import (
	"bytes"
	"fmt"
	"net/netip"
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
// already has. Long-header packets are read: a Handshake or 0-RTT packet
// passes (the server cannot open it without the Initial of its connection),
// an Initial passes if the keys of a decided connection open it, and any
// other Initial starts a recheck. A client never sends a Retry or Version
// Negotiation packet, and an unknown version is not relayed.
func (r *relay) inspectLocked(d []byte) verdict {
	if len(d) == 0 {
		r.f.s.stats.drop(dropMalformed, 1)
		return dropped
	}
	if !hasLongHeader(d) {
		return pass
	}
	if _, _, ok := firstInitial(d); ok && len(d) < minInitialDatagram {
		r.f.s.stats.drop(dropShortInitial, 1)
		return dropped
	}
	pkts, err := quic.ParseDatagram(d, r.pkts[:0])
	defer func() { clear(pkts); r.pkts = pkts[:0] }()
	if err != nil {
		r.f.s.stats.drop(dropMalformed, 1)
		return dropped
	}
	unknown := false
	for i := range pkts {
		switch p := &pkts[i]; p.Type {
		case quic.Initial:
			switch r.opensLocked(p) {
			case same:
				p.Type = decidedInitial // not the recheck's to assemble
			case notOpened:
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
)

// opensLocked reports whether the keys of a decided connection open p,
// and if so whether its CRYPTO frames agree with the hello decided for
// that connection. Bytes past the hello's end are a second ClientHello,
// after a HelloRetryRequest: held to the first's name (second.go).
func (r *relay) opensLocked(p *quic.Packet) opened {
	for i := range r.keys {
		k := &r.keys[i]
		out, pn, err := k.keys.Open(r.plain[:0], p, k.largest)
		if cap(out) > cap(r.plain) {
			r.plain = out[:0]
		}
		if err != nil {
			continue
		}
		if !k.sameCrypto(out) {
			return changed // its packet number is not taken as seen
		}
		k.largest = max(k.largest, int64(pn))
		return same
	}
	return notOpened
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
		r.check = c
	} else {
		if !c.owns(pkts) {
			s.stats.drop(dropHeldFull, 1) // a third connection: one at a time
			return dropped
		}
		if !c.deciding {
			c.add(pkts)
		}
	}
	if !c.hold(s, f.key.src.Addr(), d) {
		return dropped
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
	if ok && v.Allow && v.Dst == r.dst {
		keys, err := quic.ClientInitialKeys(c.asm.Version(), c.asm.DCID())
		if err == nil {
			if len(r.keys) == maxFlowConnections {
				// The oldest connection's Initials are long over; should
				// one still come, it is a new connection to decide again.
				copy(r.keys, r.keys[1:])
				r.keys[len(r.keys)-1] = knownKeys{}
				r.keys = r.keys[:len(r.keys)-1]
			}
			r.keys = append(r.keys, knownKeys{keys: keys, largest: -1, hello: bytes.Clone(c.asm.Hello())})
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
	var closePkt []byte
	if !f.p.Drop {
		closePkt, _ = c.asm.AppendClose(nil, quic.CodeAccessDenied, denyPhrase(rec.Rule))
	}
	f.mu.Unlock()
	s.stats.drop(dropDenied, len(heldDatagrams))
	if closePkt != nil && s.closes.allow(time.Now(), f.key.src.Addr()) {
		if _, err := r.client.Write(closePkt); err == nil {
			s.stats.closes.Add(1)
		}
	}
	rec.Action, rec.Enforced = accesslog.Deny, true
	if ok && v.Allow {
		rec.Reason = fmt.Sprintf("a second QUIC connection on the flow to %s names %s, to be relayed to %s: refused (%s)", r.dst, rec.FQDN, v.Dst, rec.Reason)
	}
	rec.Reason += fmt.Sprintf("; on a flow allowed for %q", f.rec.FQDN)
	s.cfg.Logged(&rec)
}
