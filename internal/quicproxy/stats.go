package quicproxy

import (
	"sync/atomic"

	"github.com/egressd/egressd/internal/quic"
)

// Why a datagram was dropped, as the metrics' reason label says it.
const (
	// dropNotInitial: a datagram of no flow egressd knows that starts no
	// Initial packet: a short-header packet (a client that migrated, a
	// flow that ended) or a Handshake or 0-RTT packet.
	dropNotInitial = "not_initial"
	// dropUnknownVersion: a long header of a QUIC version egressd cannot
	// read, or a client's Version Negotiation or Retry packet.
	dropUnknownVersion = "unknown_version"
	// dropMalformed: a datagram whose packets do not parse, or whose
	// Initial packet does not open (one of a decided connection that its
	// keys do not open included: see decidedConns), or, on a relayed
	// flow, one that coalesces more packets than a client does or costs
	// more opens than its Initials could (quic.MaxCoalesced, openBudget).
	dropMalformed = "malformed"
	// dropLimit: a new flow over max flows, per source, or pending.
	dropLimit = "limit"
	// dropHeldFull: a datagram of an undecided flow or connection over
	// what may be held.
	dropHeldFull = "held_full"
	// dropUndecided: datagrams held for a flow or connection that ended
	// without a decision (its hello was incomplete or malformed).
	dropUndecided = "undecided"
	// dropDenied: datagrams of a denied flow or connection.
	dropDenied = "denied"
	// dropTooBig: a datagram over maxDatagram bytes.
	dropTooBig = "too_big"
	// dropNoDestination: a datagram without its original destination.
	dropNoDestination = "no_destination"
	// dropShortInitial: a datagram with an Initial packet under
	// minInitialDatagram bytes, which servers discard (RFC 9000 §14.1):
	// not decided, not relayed.
	dropShortInitial = "short_initial"
	// dropChangedHello: an Initial of a decided connection whose CRYPTO
	// bytes are not the hello decided (see relay.opensLocked).
	dropChangedHello = "changed_hello"
	// dropNotQUIC: a datagram of a relayed flow without a long header that
	// a server on the same port could read as another protocol's (Google
	// QUIC, DTLS, STUN), or too short for a QUIC packet (see notQUIC).
	dropNotQUIC = "not_quic"
)

// DropReasons lists every reason a datagram is dropped for, as Stats
// names them.
var DropReasons = []string{dropNotInitial, dropUnknownVersion, dropMalformed, dropLimit,
	dropHeldFull, dropUndecided, dropDenied, dropTooBig, dropNoDestination, dropShortInitial, dropChangedHello, dropNotQUIC}

type counters struct {
	dropped [12]atomic.Uint64 // by DropReasons' index
	closes  atomic.Uint64
}

func (c *counters) drop(reason string, n int) {
	for i, r := range DropReasons {
		if r == reason {
			c.dropped[i].Add(uint64(n))
			return
		}
	}
	panic("quicproxy: unknown drop reason " + reason)
}

// Stats are a Server's counters.
type Stats struct {
	Flows   int // flows held now: pending, relayed, or remembered as denied
	Pending int // flows not decided yet
	// Dropped counts the datagrams dropped, by reason (DropReasons).
	Dropped map[string]uint64
	// Closes counts the CONNECTION_CLOSE packets sent to denied clients.
	Closes uint64
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := Stats{Flows: len(s.flows), Pending: s.pending}
	s.mu.Unlock()
	st.Dropped = make(map[string]uint64, len(DropReasons))
	for i, r := range DropReasons {
		st.Dropped[r] = s.stats.dropped[i].Load()
	}
	st.Closes = s.stats.closes.Load()
	return st
}

// firstDatagram says why d cannot open a flow ("" if it can): it must
// start a QUIC v1 or v2 Initial packet.
// minInitialDatagram is the smallest datagram a client may carry an
// Initial packet in; a server discards smaller ones (RFC 9000 §14.1). A
// hello decided in one would be a decision on bytes the server never
// reads, and the next Initial of that connection, padded, could carry
// another hello.
const minInitialDatagram = 1200

func firstDatagram(d []byte) string {
	if len(d) == 0 || d[0]&0x80 == 0 {
		return dropNotInitial
	}
	var buf [4]quic.Packet
	pkts, _ := quic.ParseDatagram(d, buf[:0])
	for _, p := range pkts {
		switch p.Type {
		case quic.Initial:
			if len(d) < minInitialDatagram {
				return dropShortInitial
			}
			return ""
		case quic.UnknownVersion, quic.VersionNegotiation, quic.Retry:
			return dropUnknownVersion
		}
	}
	if len(pkts) == 0 {
		return dropMalformed
	}
	return dropNotInitial
}
