package gateway

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/limit"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/peek"
	"github.com/egressd/egressd/internal/policy"
	"github.com/egressd/egressd/internal/proxyheader"
	"github.com/egressd/egressd/internal/refuse"
	"github.com/egressd/egressd/internal/relay"
)

// session is one accepted connection from its accept to its last log line.
// It owns the connection's bookkeeping: its record, its place among the
// pending handshakes (max_pending_handshakes), its slot among its source's
// connections (max_connections_per_source), and whether its line is still
// to be written. Every path ends in one of two places: finish, when the
// connection ends during set-up (refused, failed, served request by
// request), or relayed, when the relay loop ends it.
type session struct {
	g  *Gateway
	st *State // the config and policy the connection is decided with, start to end
	lc *config.Listener
	bl *boundListener // lc's listener, whose options a reload may change
	c  *net.TCPConn
	// rec is the connection's line. An explicit client's tunnels and
	// requests, and the requests of a plain HTTP connection, each have a
	// line of their own (logged then says this one is not written).
	rec   accesslog.Record
	src   netip.AddrPort // the client, from the PROXY header if there is one
	start time.Time      // when the client's own time began: after a PROXY header
	// pending: the connection counts as a pending handshake (admit counted
	// it) until its first bytes, or its proxy request, have been read.
	pending bool
	// pendingSrc: while pending, the connection holds a pending place of
	// peer: its TCP peer's address (Gateway.count), or behind a balancer
	// the source its PROXY header names (prelude).
	pendingSrc bool
	peer       netip.Addr
	// srcHeld: the connection counts against max_connections_per_source.
	srcHeld bool
	logged  bool
	// failed is a dial a relay loop made for this connection and saw fail
	// (inline.go): relay's dialVerdict counts it as its first attempt.
	failed *failedDial
	// dialled is the address a relayed connection is open to, against
	// which a name its client sends later is checked (helloCheck).
	dialled netip.AddrPort
}

type failedDial struct {
	dst netip.AddrPort
	err error
}

func (g *Gateway) newSession(bl *boundListener, c *net.TCPConn) *session {
	st := g.state.Load()
	s := &session{g: g, st: st, lc: bl.config(), bl: bl, c: c, pending: true, start: time.Now()}
	s.src = listener.AddrPort(c.RemoteAddr())
	s.peer = s.src.Addr()
	s.rec = s.record()
	return s
}

// record starts an access-log line for this client.
func (s *session) record() accesslog.Record {
	return accesslog.Record{
		Start:      time.Now(),
		Listener:   s.lc.Name,
		Src:        s.src,
		FQDNSource: accesslog.FromNone,
		Enforced:   s.st.Config.Policy.Enforce,
	}
}

// handshakeDone ends the connection's pending time once its first bytes
// (or its proxy request) have been read, or failed to be.
func (s *session) handshakeDone() {
	if s.pending {
		s.pending = false
		s.g.pending.Add(-1)
		if s.pendingSrc {
			s.pendingSrc = false
			s.g.pendingSources.Release(s.peer)
		}
	}
}

// finish ends a connection that did not reach the relay loop: its pending
// time, its source slot, and its line unless that was written elsewhere.
func (s *session) finish() {
	s.handshakeDone()
	if s.srcHeld {
		s.srcHeld = false
		s.g.sources.Release(s.src.Addr())
	}
	if !s.logged {
		s.g.logConn(&s.rec)
	}
}

// relayed ends a connection the relay loop has closed: rec (the session's
// own line, or an explicit client's tunnel's) is counted and queued for
// writeRelayLogs, the source slot released, the relay forgotten. It runs on
// the loop's goroutine, so it does no more than that and no I/O.
func (s *session) relayed(rc *relay.Conn, rec *accesslog.Record, res relay.Result) {
	g := s.g
	rec.End = time.Now().UnixNano() // its line waits (holdLog), its time must not
	rec.BytesUp += res.Up
	rec.BytesDown += res.Down
	if res.End == relay.Refused && (rec.Action != accesslog.Deny || !rec.Enforced) {
		// The watch of a second ClientHello refused what the decision
		// allowed (helloWatch): a deny that binds, as a malformed hello.
		// No rule denied it: the rule that allowed the first hello is in
		// the reason, before the refusal. (A hello found part-way
		// through a connection and denied by a rule is an enforced deny
		// already, with that rule: upgradeWatch. A report-only deny that
		// a watch then refused is a refusal like the others.)
		rec.Action, rec.Enforced, rec.Rule = accesslog.Deny, true, ""
	}
	if end := endReason(res); end != "" {
		rec.Reason += "; " + end
	}
	g.metrics.Conn(rec)
	g.recent.Add(rec)
	g.holdLog(rec)
	if s.srcHeld {
		g.sources.Release(s.src.Addr())
	}
	g.track(rc, false)
	g.active.Add(-1)
	g.wg.Done()
}

// turnAway refuses the connection before anything it sent is looked at (a
// PROXY header from the wrong peer, a limit, a connection not
// intercepted): a deny that binds in report-only mode too, and a reset.
func (s *session) turnAway(reason string) {
	if s.rec.Protocol == "" {
		s.rec.Protocol = peek.Unknown
	}
	s.rec.Action, s.rec.Enforced, s.rec.Reason = accesslog.Deny, true, reason
	refuse.Reset(s.c)
}

// prelude does what every listener does before the client's own bytes: the
// PROXY protocol header, if the listener expects one (which gives the
// client's address), and the client's slot among its source's connections.
// It reports false when the connection was turned away.
func (s *session) prelude() bool {
	cfg := s.st.Config
	if s.lc.ProxyProtocol {
		if len(s.lc.ProxyProtocolFrom) > 0 && !policy.InPrefixes(s.lc.ProxyProtocolFrom, s.src.Addr()) {
			s.turnAway(fmt.Sprintf("PROXY protocol: peer %s is not in proxy_protocol_from", s.src.Addr()))
			return false
		}
		src, ok, err := proxyheader.Read(s.c, s.rec.Start.Add(cfg.Timeouts.ClientHello))
		// The client's own silence is timed from after the balancer's
		// header.
		s.start = time.Now()
		if err != nil {
			s.turnAway("PROXY protocol expected: " + err.Error())
			return false
		}
		if ok {
			s.src, s.rec.Src = src, src
			// The pending share, which the balancer's own address could
			// not take (every client's), is the real source's from here.
			if max := limit.SourceShare(cfg.Limits.MaxPendingHandshakes); max > 0 && s.pending && !s.pendingSrc {
				if !s.g.pendingSources.Acquire(src.Addr(), max) {
					s.g.metrics.Rejected(metrics.LimitPendingPerSource)
					s.turnAway(fmt.Sprintf("limit max_pending_handshakes: %s holds its share (%d) of the pending places", src.Addr(), max))
					return false
				}
				s.pendingSrc, s.peer = true, src.Addr()
			}
		}
	}
	if max := cfg.Limits.MaxConnectionsPerSource; max > 0 {
		if !s.g.sources.Acquire(s.src.Addr(), max) {
			s.g.metrics.Rejected(metrics.LimitConnectionsPerSource)
			s.turnAway(fmt.Sprintf("limit max_connections_per_source (%d) reached for %s", max, s.src.Addr()))
			return false
		}
		s.srcHeld = true
	}
	return true
}

// original reads a transparent listener's original destination; false
// when the connection was turned away (not intercepted, or addressed to
// egressd itself). Other listeners have none.
func (s *session) original() (netip.AddrPort, bool) {
	if s.lc.Mode != config.ModeTransparent {
		return netip.AddrPort{}, true
	}
	orig, redirected, _ := listener.OriginalDst(s.c)
	s.rec.Dst = orig
	if !s.g.intercepted(s.lc, orig, redirected) {
		s.turnAway("not intercepted: the destination is egressd itself")
		return orig, false
	}
	return orig, true
}

// intercepted reports whether a transparent listener's client, whose
// original destination is orig (redirected: by NAT), was intercepted on
// its way elsewhere, not connected to egressd itself.
func (g *Gateway) intercepted(lc *config.Listener, orig netip.AddrPort, redirected bool) bool {
	return (redirected || lc.TProxy) && !g.isSelf(orig)
}

// peek reads the client's first bytes under the listener's deadlines; the
// caller releases the result.
func (s *session) peek(first []byte) peek.Result {
	cfg := s.st.Config
	if first == nil {
		first = peek.Buffer()
	}
	p := peek.PeekAfter(s.c, peek.Deadlines{
		FirstBytes: s.start.Add(cfg.Timeouts.FirstBytes),
		Complete:   s.start.Add(cfg.Timeouts.ClientHello),
	}, first)
	s.peeked(&p)
	return p
}

// peeked ends the connection's pending time once its first bytes have
// been read (or failed to be), and notes what they were.
func (s *session) peeked(p *peek.Result) {
	s.handshakeDone()
	s.g.metrics.PeekWait(time.Since(s.rec.Start))
	s.rec.Protocol = p.Protocol
}

// logAction is the access log's word for a policy action.
func logAction(a policy.Action) accesslog.Action {
	if a == policy.Allow {
		return accesslog.Allow
	}
	return accesslog.Deny
}
