package quicproxy

import (
	"encoding/binary"
	"hash/maphash"
	"time"

	"github.com/egressd/egressd/internal/quic"
)

// decidedConns remembers the connections decided on a relayed flow, by the
// version and Destination Connection ID of the Initial packets that
// started them (their keys come from those), for longer than the flow
// keeps their keys (maxFlowConnections). An Initial packet of the same
// version and connection ID that no decided keys open is that connection's
// all the same (the server files it under that ID), never the start of a
// new connection to decide, and is dropped. Decided again with another
// hello, it would let the server read bytes of two hellos as one: where a
// piece of the first never reached the server (its datagram was dropped
// after egressd had read it, or lost on the way), the second's bytes fill
// the hole, and the server reads a hello nobody decided; or a second hello
// after a HelloRetryRequest arrives half under each of two key entries and
// neither sees it whole.
//
// It holds at most maxDecidedConns. When it is full, a connection is
// forgotten only if no Initial packet of it came for forgetAfter: a server
// reads a connection's Initial packets only until its handshake is done
// (RFC 9001 §4.9.1) and gives up on a handshake after its idle timeout,
// which only packets it could process restart (RFC 9000 §10.1); before
// its handshake, those of that connection are Initial packets egressd
// passed, which count here too. With none that old, the flow takes no new
// connection: a client that starts over a thousand on one socket within
// minutes is refused, rather than any of them decided twice.
type decidedConns struct {
	seed maphash.Seed
	// last is when an Initial packet of each connection last came (Unix
	// nanoseconds), by connection (id).
	last map[uint64]int64
}

const (
	maxDecidedConns = 1024 // 16 bytes each, and a map's overhead
	forgetAfter     = 10 * time.Minute
)

func newDecidedConns() decidedConns { return decidedConns{seed: maphash.MakeSeed()} }

// id names the connection started by Initial packets of version v to dcid:
// a hash, with a seed of the flow's own, of both. Two connections of one
// flow that hash alike (a chance in 2^64 per pair, which a client cannot
// steer without the seed) are taken for one: the later is refused, never
// let through.
func (c *decidedConns) id(v quic.Version, dcid []byte) uint64 {
	b := make([]byte, 0, 4+20) // QUIC v1 and v2 connection IDs are at most 20 bytes
	b = binary.BigEndian.AppendUint32(b, uint32(v))
	return maphash.Bytes(c.seed, append(b, dcid...))
}

// seen reports whether connection id was decided on the flow, and notes
// that an Initial packet of it came at now.
func (c *decidedConns) seen(id uint64, now time.Time) bool {
	if _, ok := c.last[id]; !ok {
		return false
	}
	c.last[id] = now.UnixNano()
	return true
}

// add remembers connection id, decided at now; false if the flow has no
// room for it (see above).
func (c *decidedConns) add(id uint64, now time.Time) bool {
	if c.last == nil {
		c.last = make(map[uint64]int64)
	}
	if _, ok := c.last[id]; !ok && len(c.last) >= maxDecidedConns {
		oldest, at := uint64(0), int64(0)
		for k, t := range c.last {
			if at == 0 || t < at {
				oldest, at = k, t
			}
		}
		if now.Sub(time.Unix(0, at)) < forgetAfter {
			return false
		}
		delete(c.last, oldest)
	}
	c.last[id] = now.UnixNano()
	return true
}
