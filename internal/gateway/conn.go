package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/fqdn"
	"github.com/egressd/egressd/internal/peek"
	"github.com/egressd/egressd/internal/policy"
	"github.com/egressd/egressd/internal/refuse"
	"github.com/egressd/egressd/internal/relay"
	"github.com/egressd/egressd/internal/upstream"
)

// verdict is the outcome of deciding one connection: the policy's decision
// with destination safety applied, possibly overridden (anti-spoofing, no
// route), and the address to dial. An invalid dst means there is nowhere to
// go: the connection is refused even in report-only mode.
type verdict struct {
	policy.Decision
	dst netip.AddrPort
	// answers are the name's DNS answers when dst is the first of them:
	// where dialVerdict goes if dst cannot be reached, each decided as in
	// was, by pol.
	answers []netip.Addr
	in      policy.Input
	pol     *policy.Policy
	// byName: the name was denied without being resolved (no dst).
	byName bool
	// noAddr: egressd has no address for the name (it did not resolve).
	// unreachable: and the policy allowed it. Either way, when the
	// policy's own answer would have let the client through (an allow, or
	// a deny that report-only mode waives), the client is told the server
	// cannot be reached, as when it is down, not that policy denied it.
	noAddr, unreachable bool
	// wouldBlock: deciding needs a look-up that is not cached, and the
	// caller (a relay loop, under upstream.CachedOnly) may not wait for it.
	wouldBlock bool
}

// handle is one connection's life up to its relay, in its steps: the
// prelude every listener shares (PROXY header, source slot), the explicit
// listener's proxy protocols or else the original destination and the
// first bytes, the decision, and the dial and hand-over to the relay loop.
// Every connection ends in one line: session.finish writes it when handle
// returns false, session.relayed when the relay loop ends a connection
// handed to it (handle returns true).
func (g *Gateway) handle(ctx context.Context, bl *boundListener, c *net.TCPConn, pendingSrc bool) (relaying bool) {
	s := g.newSession(bl, c)
	s.pendingSrc = pendingSrc
	return s.handle(ctx, nil)
}

// handle runs the session from its prelude; first holds the bytes a
// relay loop read from the client already (a peek buffer), if any. A
// session a loop began has its source slot already when srcHeld is set.
func (s *session) handle(ctx context.Context, first []byte) (relaying bool) {
	g, c := s.g, s.c
	defer func() {
		if !relaying {
			s.finish()
		}
	}()
	if !s.srcHeld && !s.prelude() {
		return false
	}
	if s.lc.Mode == config.ModeExplicit {
		s.logged = true // a line per tunnel and per forwarded request
		return s.serveExplicit(ctx)
	}
	orig, ok := s.original()
	if !ok {
		return false
	}
	p := s.peek(first)
	defer peek.Release(&p)
	switch {
	case p.Err != nil:
		s.peekFailed(p)
		refuse.Reset(c)
		return false
	case p.Protocol == peek.HTTP:
		// Every request of a plain HTTP connection is decided on its own,
		// a line each: the first request's Host proves nothing about the
		// second's.
		s.logged = true
		s.serveRequests(ctx, p.Data, orig)
		return false
	}
	v := g.judge(ctx, s.st, s.lc, &s.rec, &p, orig)
	switch {
	case g.refusing(s.st, v, &s.rec):
		if v.noAddr && (v.unreachable || !s.st.Config.Policy.Enforce) && p.Protocol == peek.TLS {
			refuse.TLSAlert(c, p.Hello.RecordVersion, refuse.AlertInternalError)
			return false
		}
		g.refuse(c, p, v.Rule)
		return false
	case p.Protocol == peek.ServerFirst:
		return s.provisional(ctx, v, orig, nil)
	case p.Preamble:
		// A PostgreSQL request for TLS: nothing to decide in it, but a
		// ClientHello follows the server's "S": watched for as a late
		// hello is.
		return s.provisional(ctx, v, orig, &p)
	}
	return s.relay(ctx, v, &p, orig)
}

// relay dials v's address and hands the connection, with the first bytes
// p read, to the relay loop. The upstream socket is made and connected by
// the relay loop itself, and the client joins it there: neither passes
// through net.Dialer.
func (s *session) relay(ctx context.Context, v verdict, p *peek.Result, orig netip.AddrPort) (relaying bool) {
	cfg := s.st.Config
	hw, err := newHelloWatch(p, p.Data)
	if err != nil {
		s.g.refuseBehindHello(s, p, &s.rec, err)
		return false
	}
	var w relay.Watch = nil
	if hw != nil {
		w = hw
		s.onDecoy(ctx, hw, &s.rec, nil, orig)
	}
	var uw *upgradeWatch
	if upgradeWatched(p) {
		s.dialled = v.dst
		var first []byte
		if uw, first, err = s.newUpgradeWatch(ctx, p, p.Data, &s.rec, s.helloCheck(orig)); err != nil {
			s.refuseUpgrade(s.c, &s.rec, err)
			return false
		}
		w, p.Data = uw, first
		if uw.decided() {
			// The hello was checked against v.dst: no other answer is
			// tried, where the check would not hold.
			v.answers = nil
		}
	}
	dialStart := time.Now()
	rc, err := dialVerdict(ctx, &v, cfg.Timeouts.Connect, func(ctx context.Context, dst netip.AddrPort, timeout time.Duration) (*relay.Conn, error) {
		if f := s.failed; f != nil && f.dst == dst {
			s.failed = nil // the loop's dial of it failed already (inline.go)
			return nil, f.err
		}
		return s.g.loops.Dial(ctx, dst, cfg.Mark, timeout, p.Data)
	})
	s.g.metrics.Dial(time.Since(dialStart))
	s.rec.Dst, s.dialled = v.dst, v.dst
	if uw == nil || !uw.decided() {
		s.rec.Reason = v.Reason // a hello decided in the first bytes has its own
	}
	if err != nil {
		s.rec.Reason = v.Reason + "; upstream failed: " + err.Error()
		if p.Protocol == peek.TLS {
			refuse.TLSAlert(s.c, p.Hello.RecordVersion, refuse.AlertInternalError)
		} else {
			refuse.Reset(s.c)
		}
		return false
	}
	err = rc.Attach(s.c, p.Data, cfg.Timeouts.Idle, func(res relay.Result) {
		s.relayed(rc, &s.rec, res)
	})
	if err != nil {
		s.rec.Reason = v.Reason + "; relay failed: " + err.Error()
		refuse.Reset(s.c)
		return false
	}
	s.rec.BytesUp = int64(len(p.Data))
	peek.Release(p)
	s.watch(rc, w)
	// The loop's callback keeps s until the connection ends; the closed
	// net.TCPConn (its fd record and addresses) need not live as long.
	c := s.c
	s.c = nil
	s.g.handOff(c, rc)
	return true
}

// provisional carries a connection allowed without a name from its bytes:
// server-first (first is nil), or whose first bytes are a PostgreSQL
// request for TLS (first, sent to the server at once). The client's next
// bytes, when they come, are identified and decided like early ones
// (late).
func (s *session) provisional(ctx context.Context, v verdict, orig netip.AddrPort, first *peek.Result) (relaying bool) {
	up, err := dialNet(ctx, s.st, &v)
	s.rec.Dst, s.rec.Reason = v.dst, v.Reason
	if err != nil {
		s.rec.Reason = v.Reason + "; upstream failed: " + err.Error()
		refuse.Reset(s.c)
		return false
	}
	if first != nil && (!s.sendOn(up, first, func() {}, &s.rec) || !s.preambleAnswer(up, &s.rec, false)) {
		return false
	}
	s.dialled = v.dst
	return s.late(ctx, up, &s.rec, s.helloCheck(orig), func(first []byte) {
		s.serveRequests(ctx, first, orig)
	})
}

// helloCheck decides a name a connection's client sent after the
// connection was decided and dialled (a late first hello or request, a
// ClientHello part-way through): as judge decides first bytes, with the
// address it is open to (dialled) kept, since its server is reached
// already (s.dialled). A name that would be dialled elsewhere is refused.
func (s *session) helloCheck(orig netip.AddrPort) upgradeCheck {
	rec := &s.rec
	return func(ctx context.Context, q *peek.Result) (refused, wouldBlock bool) {
		v := s.g.judge(ctx, s.st, s.lc, rec, q, orig)
		if v.wouldBlock {
			return false, true
		}
		open := s.dialled
		if !sameDst(v, open) {
			rec.Action, rec.Enforced = accesslog.Deny, true
			rec.Reason = fmt.Sprintf("%s names %s, to be dialled at %s, but this connection is open to %s", q.Protocol, rec.FQDN, v.dst, open)
			v.Action = policy.Deny
		}
		rec.Dst = open
		return s.g.refusing(s.st, v, rec), false
	}
}

// refuseUpgrade refuses a connection whose first bytes carry a
// ClientHello behind other bytes that newUpgradeWatch refused (err, a
// relay.Refusal), before anything was dialled: its alert to the client,
// its reason in the line.
func (s *session) refuseUpgrade(c net.Conn, rec *accesslog.Record, err error) {
	r, ok := errors.AsType[*relay.Refusal](err)
	if !ok {
		r = &relay.Refusal{Why: err.Error()}
	}
	rec.Action, rec.Enforced = accesslog.Deny, true
	rec.Reason += "; refused: " + r.Why
	if len(r.Reply) > 0 {
		refuse.Answer(c, r.Reply)
		return
	}
	refuse.Reset(c)
}

// judge identifies the name a client's first bytes carry (or, with none,
// the name this client resolved to orig through egressd's DNS) into rec,
// and decides the connection as the listener's mode says. It fills rec's
// name, rule, action and reason; the caller enforces.
func (g *Gateway) judge(ctx context.Context, st *State, lc *config.Listener, rec *accesslog.Record, p *peek.Result, orig netip.AddrPort) verdict {
	rec.Protocol = p.Protocol
	rec.FQDN, rec.FQDNSource, rec.ECH = "", accesslog.FromNone, false
	rec.JA4 = g.fingerprint(p)
	rawName := ""
	switch {
	case carriesHello(p):
		rec.ALPN = p.Hello.ALPN.Strings() // copies: the log outlives the peek buffer
		if p.Hello.HasSNI {
			rawName, rec.FQDNSource = string(p.Hello.ServerName), accesslog.FromSNI
		}
	case p.Protocol == peek.HTTP && p.Host != "":
		rawName, rec.FQDNSource = p.Host, accesslog.FromHost
	}
	name, ok := fqdn.Normalize(rawName)
	if ok {
		rec.FQDN = name
	} else {
		rec.FQDNSource = accesslog.FromNone
	}
	rec.ECH = g.realECH(rec.Src.Addr(), rec.FQDN, p)
	// No name on the wire (SSH, server-first, a TLS hello without SNI):
	// the name this client itself most recently resolved to this address
	// through egressd's DNS, never another client's. A client that did
	// send a name, only not a valid one (an IP literal Host, an SNI with a
	// port or odd bytes), gets none: the server reads what it sent, not
	// the name egressd would decide on.
	if rec.FQDN == "" && rawName == "" && orig.IsValid() && g.clientNames != nil {
		if n, ok := g.clientNames.Lookup(rec.Src.Addr(), orig.Addr()); ok {
			rec.FQDN, rec.FQDNSource = n, accesslog.FromDNS
		}
	}
	var v verdict
	why := invalidName(rawName, ok)
	if why == "" && p.Protocol == peek.TLS && peek.ReadsAsRequest(p.Data) {
		why = helloReadsAsRequest
	}
	if why != "" {
		v = verdict{Decision: policy.Decision{Action: policy.Deny, Index: -1, Reason: why}, dst: orig}
	} else {
		v = g.decideName(ctx, st, lc, policy.Input{Src: rec.Src.Addr(), FQDN: rec.FQDN, Protocol: p.Protocol, JA4: rec.JA4}, rec.FQDNSource, orig)
	}
	if v.dst.IsValid() {
		rec.Dst = v.dst
	}
	if rec.ECH {
		v.Reason += "; ECH: decided on the outer server name, the provider's public name"
	}
	rec.Rule, rec.Reason = v.Rule, v.Reason
	rec.Action = logAction(v.Action)
	return v
}

// helloReadsAsRequest is the reason for a ClientHello that peek.ReadsAsRequest.
const helloReadsAsRequest = "a ClientHello whose bytes also read as an HTTP request line (headers of bytes an HTTP server skips, a request in its random): refused, since a server may serve the request's Host"

// invalidName is why a connection whose first bytes named raw, which did
// not normalise to an FQDN (valid false), is refused, or "" when it is
// not: no name sent, or an IP literal, which names no server and leaves
// the connection decided on its address. Any other name that is not an
// FQDN is refused whatever the rules say. Decided as a connection with no
// name, it would pass a rule that allows an address range after rules
// that deny names, while its server tidies the name up (nginx cuts an SNI
// at ':', others trim spaces) and acts on the name they deny. The DNS
// forwarder refuses such a question for the same reason.
func invalidName(raw string, valid bool) string {
	if raw == "" || valid {
		return ""
	}
	_, addr, err := fqdn.ParseHost(raw)
	if err == nil && addr.IsValid() {
		return ""
	}
	why := "an IPv4 address spelt oddly"
	if err != nil && !errors.Is(err, fqdn.ErrOddAddress) {
		why = strings.TrimPrefix(err.Error(), "invalid host name: ")
	}
	if len(raw) > 80 { // a client's bytes: the line keeps a sample
		raw = raw[:80] + "…"
	}
	return fmt.Sprintf("server name %q is not a valid name (%s): refused, since a server may take it for a name the policy denies", raw, why)
}

// carriesHello reports whether p holds a parsed ClientHello: from a TLS
// connection's first bytes, or reassembled from a QUIC flow's Initial
// packets (decideQUIC).
func carriesHello(p *peek.Result) bool {
	return (p.Protocol == peek.TLS || p.Protocol == accesslog.ProtocolQUIC) && p.HelloOK
}

// fingerprint is the client's JA4, "" without a parsed ClientHello.
func (g *Gateway) fingerprint(p *peek.Result) string {
	switch {
	case !carriesHello(p):
		return ""
	case p.Protocol == accesslog.ProtocolQUIC:
		return g.ja4.JA4(&p.Hello, clienthello.QUIC)
	}
	return g.ja4.JA4(&p.Hello, clienthello.TCP)
}

// decideName decides a connection to name (in.FQDN, learnt from source)
// as the listener's mode says.
func (g *Gateway) decideName(ctx context.Context, st *State, lc *config.Listener, in policy.Input, source accesslog.NameSource, orig netip.AddrPort) verdict {
	switch {
	case lc.Mode == config.ModeSNI:
		return g.decideSNI(ctx, st, lc, in)
	case source == accesslog.FromDNS:
		// The name was looked up from this very destination: there is
		// nothing to verify, and nothing else to dial, whatever
		// sni_destination says.
		in.Dst, in.Port = orig.Addr(), orig.Port()
		return verdict{Decision: g.decideDial(st, in), dst: orig}
	}
	return g.decideTransparent(ctx, st, lc, in, orig)
}

// realECH reports whether p offers real ECH rather than GREASE. An
// encrypted_client_hello extension alone proves nothing: Chrome sends a
// GREASE one on every connection, indistinguishable on the wire (RFC 9849
// §6.2). It is real ECH when the outer SNI (name) is the public name of a
// config this client was handed through egressd's DNS, with that
// config_id. Either way the decision is on the outer SNI, the only name
// visible. Every listener asks this one function.
func (g *Gateway) realECH(src netip.Addr, name string, p *peek.Result) bool {
	return carriesHello(p) && p.Hello.ECHOuter && name != "" && g.clientNames != nil &&
		g.clientNames.ECHConfigured(src, name, p.Hello.ECHConfigID)
}

// refusing reports whether v keeps the client out, marking rec enforced:
// a deny, unless report-only mode waives it (never for destination
// safety, never without an address).
func (g *Gateway) refusing(st *State, v verdict, rec *accesslog.Record) bool {
	if v.Action == policy.Deny && v.Enforced(st.Config.Policy.Enforce, v.dst.IsValid()) {
		rec.Enforced = true
		return true
	}
	return false
}

// relayLogQueue is how many relayed connections' lines may wait for a slow
// log writer before the relay loops wait too: lines are never dropped.
const relayLogQueue = 4096

// writeRelayLogs writes the lines relayed queues, until Serve closes the
// queue. Lines that piled up while it wrote go out together, in one write.
func (g *Gateway) writeRelayLogs() {
	defer close(g.logDone)
	batch := make([]*accesslog.Record, 0, logBatch)
	for rec := range g.relayLog {
		// Take what else is queued already, never waiting for more: one
		// write(2) for the lot.
		batch = append(batch[:0], rec)
	more:
		for len(batch) < logBatch {
			select {
			case r, ok := <-g.relayLog:
				if !ok {
					break more
				}
				batch = append(batch, r)
			default:
				break more
			}
		}
		g.access.LogBatch(batch)
		clear(batch)
	}
}

// logBatch bounds how many queued lines go out in one write.
const logBatch = 64

// heldLogs are the lines of relays that ended since the loops last handed
// them to writeRelayLogs. A line is held at most about heldFor (or until
// its loop goes quiet, a few milliseconds): the writer, woken for each
// line, cost every connection a wake-up of another thread, and on a busy
// gateway the lines of a few milliseconds go out in one write instead.
type heldLogs struct {
	n      atomic.Int32 // len(recs), read without mu by the loops' checks
	mu     sync.Mutex
	recs   []*accesslog.Record
	since  time.Time // when the first of recs was held
	closed bool      // Serve has closed relayLog: nothing more is sent
}

// heldFor is how long a relayed connection's line may wait for others to
// go out with it, on a loop that never goes quiet. 5 ms left 3.8 context
// switches per TLS connection at c=64, 20 ms 3.6 (perf stat, 4 runs
// each); logBatch lines go out at once whatever their age.
const heldFor = 20 * time.Millisecond

// holdLog holds a relayed connection's line (on a loop's goroutine).
// Holding never waits for the writer; handing over does (flushHeld), as a
// full relayLog always made the loops wait.
func (g *Gateway) holdLog(rec *accesslog.Record) {
	h := &g.held
	h.mu.Lock()
	if len(h.recs) == 0 {
		h.since = time.Now()
	}
	h.recs = append(h.recs, rec)
	h.n.Store(int32(len(h.recs)))
	full := len(h.recs) >= logBatch
	h.mu.Unlock()
	if full {
		g.flushHeld(true)
	}
}

// flushHeld hands the held lines to writeRelayLogs when its loop has gone
// quiet (all), or when the first has waited heldFor, and reports whether
// it did. It is the relay loops' OnBatch: called after every batch of
// events, it costs a load when nothing is held.
func (g *Gateway) flushHeld(quiet bool) (sent bool) {
	h := &g.held
	if h.n.Load() == 0 {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || len(h.recs) == 0 || !quiet && time.Since(h.since) < heldFor {
		return false
	}
	// Sent under mu, so that closeHeld never closes relayLog under a
	// send; a full relayLog makes this loop wait, as it always did.
	for _, rec := range h.recs {
		g.relayLog <- rec
	}
	clear(h.recs)
	h.recs = h.recs[:0]
	h.n.Store(0)
	return true
}

// closeHeld hands over what is held and lets nothing more through; Serve
// calls it, once every relay has ended, before it closes relayLog.
func (g *Gateway) closeHeld() {
	g.flushHeld(true)
	g.held.mu.Lock()
	g.held.closed = true
	g.held.mu.Unlock()
}

// decideSNI routes on the name: resolve it, then decide with the first
// answer as the destination, every answer checked (policy.DecideDial); the
// others are where the dial goes if the first fails (dialVerdict).
func (g *Gateway) decideSNI(ctx context.Context, st *State, lc *config.Listener, in policy.Input) verdict {
	in.Port = lc.UpstreamPort
	if in.FQDN == "" {
		return noRoute(st.Policy.Decide(in), "sni listener: no server name to route on")
	}
	return g.resolved(ctx, st, in, lc.UpstreamPort)
}

// resolved decides a connection whose destination is the name's DNS answer.
// The name is decided first: one the policy denies whatever its address is
// refused without being resolved (byName), so that it never leaves egressd
// as a DNS query. Report-only mode resolves every name, denied ones too:
// it lets them through, and a dial needs the address.
func (g *Gateway) resolved(ctx context.Context, st *State, in policy.Input, port uint16) verdict {
	d, resolve := st.Policy.DecideName(in)
	if !resolve && st.Config.Policy.Enforce {
		d.Reason += "; not resolved: denied by name"
		return verdict{Decision: d, byName: true}
	}
	lk, err := g.lookups.Resolve(upstream.WithSource(ctx, in.Src), in.FQDN)
	if errors.Is(err, upstream.ErrNotCached) {
		return verdict{wouldBlock: true}
	}
	if err != nil {
		return noRoute(d, err.Error())
	}
	in.Dst = lk.Addrs[0]
	return verdict{
		Decision: g.decideDial(st, in, lk.Addrs...),
		dst:      netip.AddrPortFrom(lk.Addrs[0], port),
		answers:  lk.Addrs,
		in:       in,
		pol:      st.Policy,
	}
}

// noRoute is the verdict when egressd has no address to dial: a deny,
// whatever the policy said, with the reason leading with why. When the
// policy allowed the name, unreachable says so.
func noRoute(d policy.Decision, why string) verdict {
	allowed := d.Action == policy.Allow
	if allowed {
		d.Action, d.Reason = policy.Deny, why+" (the policy allows it: "+d.Reason+")"
	} else {
		d.Reason = why + "; " + d.Reason
	}
	return verdict{Decision: d, unreachable: allowed, noAddr: true}
}

// decideTransparent decides on the original destination and the name the
// client claims, checking the claim as sni_destination says.
func (g *Gateway) decideTransparent(ctx context.Context, st *State, lc *config.Listener, in policy.Input, orig netip.AddrPort) verdict {
	in.Port = orig.Port()
	if lc.SNIDestination == config.Resolve && in.FQDN != "" {
		return g.resolved(ctx, st, in, orig.Port())
	}
	in.Dst = orig.Addr()
	v := verdict{Decision: g.decideDial(st, in), dst: orig}
	if v.Action != policy.Allow || lc.SNIDestination != config.Verify {
		return v
	}
	if !v.ByFQDN {
		if in.FQDN != "" {
			// Not looked up: the name decided nothing. The line's fqdn is
			// only what the client claimed, and says so: a client going to
			// a denied name's server may claim any other.
			v.Reason += "; the name was not checked against the destination: the rule allows by address or port"
		}
		return v
	}
	// The name is what allowed this connection: it must be the name of the
	// address the client is really going to. What this client resolved
	// through egressd's own DNS answers that first, without a fresh look-up.
	if g.clientNames != nil && g.clientNames.Resolved(in.Src, in.FQDN, orig.Addr()) {
		v.Reason += "; name verified: this client resolved it to " + orig.Addr().String() + " through egressd"
		return v
	}
	lk, err := g.lookups.Resolve(upstream.WithSource(ctx, in.Src), in.FQDN)
	switch {
	case errors.Is(err, upstream.ErrNotCached):
		return verdict{wouldBlock: true}
	case err != nil:
		v.Action = policy.Deny
		v.Reason = "cannot verify " + in.FQDN + " against " + orig.Addr().String() + ": " + err.Error()
	case !slices.Contains(lk.Addrs, orig.Addr()):
		v.Action = policy.Deny
		v.Reason = fmt.Sprintf("spoofed name: %s does not resolve to destination %s (sni_destination: verify)", in.FQDN, orig.Addr())
	}
	return v
}

// refuse tells a denied client no in its protocol.
func (g *Gateway) refuse(c net.Conn, p peek.Result, rule string) {
	switch p.Protocol {
	case peek.TLS:
		refuse.TLSAlert(c, p.Hello.RecordVersion, refuse.AlertAccessDenied)
	case peek.HTTP:
		refuse.HTTPForbidden(c, rule)
	default:
		refuse.Reset(c)
	}
}

// peekFailed words the line of a connection whose first bytes failed (p):
// a deny saying why, or no decision for a client that left before it
// sent anything.
func (s *session) peekFailed(p peek.Result) {
	s.rec.Action, s.rec.Reason = accesslog.Deny, peekReason(p)
	if p.Protocol == peek.ServerFirst && closedEarly(p.Err) {
		s.rec.Action = accesslog.None
	}
}

func peekReason(p peek.Result) string {
	switch {
	case p.Protocol == peek.ServerFirst && errors.Is(p.Err, io.EOF):
		return "client closed before sending anything"
	case errors.Is(p.Err, syscall.ECONNRESET):
		return "client reset the connection during peek"
	}
	return p.Err.Error()
}

// endReason words how a relayed connection ended for its log line, naming
// the side that ended it, as the relay tells (r.End, r.By): the direction
// an error surfaced in does not say whose it was, since a client's reset
// fails the write of the upstream's bytes to it too. An ordinary close by
// both adds nothing.
func endReason(r relay.Result) string {
	switch r.End {
	case relay.Idle:
		return "closed: idle timeout"
	case relay.Drained:
		return "closed by egressd: drain over"
	case relay.Refused:
		return "refused: " + r.Why
	case relay.Reset:
		return r.By.String() + " reset the connection"
	case relay.Failed:
		err := r.UpErr
		if err == nil || errors.Is(err, net.ErrClosed) {
			err = r.DownErr
		}
		if r.By == relay.Local {
			return "relay failed: " + fmt.Sprint(err)
		}
		return r.By.String() + " connection failed: " + fmt.Sprint(err)
	case relay.Closed:
		if r.UpErr == nil && r.DownErr == nil {
			return ""
		}
		// Its socket reset what the other side still sent after its close.
		other := relay.Upstream
		if r.By == relay.Upstream {
			other = relay.Client
		}
		return r.By.String() + " closed the connection before the " + other.String() + " had sent all"
	}
	return ""
}
