package quicproxy

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/limit"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/quic"
)

// state is where a flow is in its life.
type state uint8

const (
	pending  state = iota // collecting its ClientHello, datagrams held
	deciding              // hello read, Decide running, datagrams held
	relaying              // allowed: datagrams relayed both ways
	denied                // refused: remembered until the client goes quiet
	ended
)

// endCause is why a flow ended, for its line.
type endCause uint8

const (
	endNone     endCause = iota
	endIdle              // no datagram either way for Params.Idle
	endDrained           // the Server was closed
	endReplaced          // a denied flow's client started another connection
	endFailed            // a socket failed
)

// flow is one client address and port with one original destination.
type flow struct {
	s   *Server
	key flowKey
	p   Params
	rec accesslog.Record

	// ready is closed when asm's status leaves NeedMore; done when the
	// flow ends.
	ready, done chan struct{}
	readyOnce   sync.Once
	// Under s.mu.
	pending, forgotten bool
	// admitted gives the flow's place in Config.Admit's budget back
	// (leave); nil without one.
	admitted func()

	mu        sync.Mutex
	st        state
	cause     endCause
	failure   error // with endFailed
	asm       *quic.Assembler
	held      [][]byte // datagrams not yet relayed, in arrival order
	heldBytes int
	seen      int       // datagrams received before the decision
	last      time.Time // a denied flow's last datagram

	// A relayed flow's.
	relay *relay
	// A denied flow's: the CONNECTION_CLOSE it answers with (nil with
	// Params.Drop), and the connection it answers for.
	closePkt []byte
	version  quic.Version
	dcid     []byte
	answered closeCount
}

func newFlow(s *Server, k flowKey, p Params) *flow {
	return &flow{
		s: s, key: k, p: p,
		rec: accesslog.Record{
			Start: time.Now(), Listener: p.Listener, Src: k.src, Dst: k.orig,
			Protocol: accesslog.ProtocolQUIC, FQDNSource: accesslog.FromNone, Enforced: p.Enforce,
		},
		ready: make(chan struct{}), done: make(chan struct{}),
		asm: new(quic.Assembler),
	}
}

// fromListener takes a datagram the listening socket received for this
// flow. false means the flow no longer takes it (it ended, or d starts a
// new connection on a denied flow): d opens a flow of its own.
func (f *flow) fromListener(d []byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch f.st {
	case pending:
		f.seen++
		if !hasLongHeader(d) {
			f.s.stats.drop(dropNotInitial, 1)
			return true
		}
		if _, _, ok := firstInitial(d); ok && len(d) < minInitialDatagram {
			f.s.stats.drop(dropShortInitial, 1)
			return true
		}
		// Read only if held: a hello decided with bytes of a datagram
		// that was not held, and so never reaches the server, is one the
		// server never read whole, and the connection's next Initial could
		// fill the hole with other bytes.
		if f.holdLocked(d) {
			f.asm.AddDatagram(d) // a packet that does not open is the server's to ignore too
			f.checkReadyLocked()
		}
	case deciding:
		f.seen++
		f.holdLocked(d)
	case relaying:
		f.relay.fromListener(d)
	case denied:
		if v, dcid, ok := firstInitial(d); ok && (v != f.version || !bytes.Equal(dcid, f.dcid)) {
			return false
		}
		f.last = time.Now()
		f.answerLocked(d)
	case ended:
		return false
	}
	return true
}

// hold keeps a copy of d until the decision; false when over a bound (d
// is dropped and counted).
func (f *flow) hold(d []byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.holdLocked(d)
}

func (f *flow) holdLocked(d []byte) bool {
	if len(f.held) >= maxHeldPerFlow || f.heldBytes+len(d) > maxHeldBytesPerFlow {
		f.s.stats.drop(dropHeldFull, 1)
		return false
	}
	if !f.s.heldBy.AcquireN(f.key.src.Addr(), len(d), maxHeldBytesPerSource) {
		f.s.stats.drop(dropHeldFull, 1)
		return false
	}
	if f.s.held.Add(int64(len(d))) > maxHeldBytes {
		f.s.held.Add(-int64(len(d)))
		f.s.heldBy.ReleaseN(f.key.src.Addr(), len(d))
		f.s.stats.drop(dropHeldFull, 1)
		return false
	}
	f.held = append(f.held, bytes.Clone(d))
	f.heldBytes += len(d)
	return true
}

// takeHeld returns the held datagrams and forgets them.
func (f *flow) takeHeldLocked() [][]byte {
	h := f.held
	f.s.held.Add(-int64(f.heldBytes))
	f.s.heldBy.ReleaseN(f.key.src.Addr(), f.heldBytes)
	f.held, f.heldBytes = nil, 0
	return h
}

func (f *flow) releaseHeld() {
	f.mu.Lock()
	f.takeHeldLocked()
	f.mu.Unlock()
}

func (f *flow) checkReady() {
	f.mu.Lock()
	f.checkReadyLocked()
	f.mu.Unlock()
}

func (f *flow) checkReadyLocked() {
	if f.asm.Status() != quic.NeedMore {
		f.readyOnce.Do(func() { close(f.ready) })
	}
}

// end ends the flow for cause, unless it has ended already: the sockets of
// a relayed flow close, and its goroutines see it.
func (f *flow) end(cause endCause) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.endLocked(cause, nil)
}

func (f *flow) endLocked(cause endCause, err error) {
	if f.st == ended {
		return
	}
	f.st, f.cause, f.failure = ended, cause, err
	close(f.done)
	if f.relay != nil {
		f.relay.close()
	}
}

// run is the flow's life after its first datagram: wait for the hello,
// decide, then relay or deny, and log.
func (f *flow) run() {
	s := f.s
	defer s.wg.Done()
	defer s.forget(f)
	defer f.releaseHeld()

	timer := time.NewTimer(f.p.HelloTimeout)
	select {
	case <-f.ready:
	case <-timer.C:
	case <-f.done:
	}
	timer.Stop()
	f.mu.Lock()
	status, cause, seen := f.asm.Status(), f.cause, f.seen
	if f.st == pending {
		f.st = deciding
	}
	f.mu.Unlock()
	s.decided(f)

	var info *clienthello.Info
	ok := false
	if status == quic.Complete {
		info, ok = parseHello(f.asm.Hello())
	}
	switch {
	case cause != endNone:
		f.rec.Action, f.rec.Reason = accesslog.None, "closed by egressd before the ClientHello was complete"
		f.undecided()
		return
	case status == quic.NeedMore:
		f.refuseUndecided(fmt.Sprintf("client_hello timeout: QUIC ClientHello incomplete after %d datagrams", seen+1))
		return
	case status == quic.Invalid:
		f.refuseUndecided("malformed QUIC Initial packets")
		return
	case !ok:
		f.refuseUndecided("malformed TLS ClientHello in QUIC Initial packets")
		return
	}
	v := s.cfg.Decide(s.ctx, &f.rec, &Hello{Src: f.key.src, Orig: f.key.orig, Info: info})
	if v.Allow {
		f.relayFlow(v)
		return
	}
	f.deny(v)
}

// undecided ends a flow that was never decided: its held datagrams are
// dropped, and its line written.
func (f *flow) undecided() {
	f.mu.Lock()
	n := len(f.takeHeldLocked())
	f.endLocked(endNone, nil)
	f.mu.Unlock()
	f.s.stats.drop(dropUndecided, n)
	f.s.cfg.Logged(&f.rec)
}

// refuseUndecided refuses a flow whose hello could not be read, as the TCP
// path refuses a client whose hello did not come: a deny that binds in
// report-only mode too, since there is no name to let through.
func (f *flow) refuseUndecided(reason string) {
	f.rec.Action, f.rec.Enforced, f.rec.Reason = accesslog.Deny, true, reason
	f.undecided()
}

// deny refuses the flow: its line is written now, and the flow stays in
// the table, answering (or dropping) the client's retransmissions, until
// the client has been quiet for HelloTimeout.
func (f *flow) deny(v Verdict) {
	s := f.s
	code, phrase := uint64(quic.CodeAccessDenied), denyPhrase(f.rec.Rule)
	if v.Unreachable {
		code, phrase = codeInternalError, "egressd: the server cannot be reached"
	}
	f.mu.Lock()
	if f.st == ended {
		f.mu.Unlock()
		s.cfg.Logged(&f.rec)
		return
	}
	f.st, f.last = denied, time.Now()
	f.version, f.dcid = f.asm.Version(), f.asm.DCID()
	if !f.p.Drop {
		f.closePkt, _ = f.asm.AppendClose(nil, code, phrase)
	}
	f.asm = nil // the hello is decided; its buffer can go
	for _, d := range f.takeHeldLocked() {
		f.answerLocked(d)
	}
	f.mu.Unlock()
	// It holds no socket towards a server: its place in the connection
	// budget goes back now, not when it is forgotten (spoofed Initials
	// naming a denied server would otherwise fill the budget that TCP
	// connections share).
	s.mu.Lock()
	f.leave()
	s.mu.Unlock()
	s.cfg.Logged(&f.rec)

	timer := time.NewTimer(f.p.HelloTimeout)
	defer timer.Stop()
	for {
		select {
		case <-f.done:
			return
		case <-timer.C:
		}
		f.mu.Lock()
		quiet := time.Since(f.last)
		if quiet >= f.p.HelloTimeout {
			f.endLocked(endIdle, nil)
			f.mu.Unlock()
			return
		}
		f.mu.Unlock()
		timer.Reset(f.p.HelloTimeout - quiet)
	}
}

// codeInternalError is CRYPTO_ERROR with the TLS alert internal_error
// (80), as the TCP path answers an allowed name that cannot be reached.
const codeInternalError = 0x0100 + 80

// denyPhrase is the CONNECTION_CLOSE reason phrase, which clients show.
func denyPhrase(rule string) string {
	if rule == "" {
		return "egressd: denied by the default policy"
	}
	return "egressd: denied by rule " + strconv.Quote(rule)
}

// answerLocked answers a denied flow's datagram d: with the
// CONNECTION_CLOSE if d carries an Initial of the denied connection and
// the rate allows, else nothing. d is dropped either way.
func (f *flow) answerLocked(d []byte) {
	f.s.stats.drop(dropDenied, 1)
	if f.closePkt == nil {
		return
	}
	if v, dcid, ok := firstInitial(d); !ok || v != f.version || !bytes.Equal(dcid, f.dcid) {
		return
	}
	if !f.answered.allow(time.Now()) || !f.s.closes.allow(time.Now(), f.key.src.Addr()) {
		return
	}
	if err := listener.SendUDPFrom(f.key.orig, f.key.src, f.closePkt, f.p.Transparent); err != nil {
		f.s.cfg.Log.Debug("udp: CONNECTION_CLOSE not sent", "src", f.key.src.String(), "err", err)
		return
	}
	f.s.stats.closes.Add(1)
}

// hasLongHeader reports whether d starts a long-header packet.
func hasLongHeader(d []byte) bool { return len(d) > 0 && d[0]&0x80 != 0 }

// firstInitial returns the version and Destination Connection ID of the
// first Initial packet of d.
func firstInitial(d []byte) (quic.Version, []byte, bool) {
	if !hasLongHeader(d) {
		return 0, nil, false
	}
	var buf [4]quic.Packet
	pkts, _ := quic.ParseDatagram(d, buf[:0])
	for _, p := range pkts {
		if p.Type == quic.Initial {
			return p.Version, p.DCID, true
		}
	}
	return 0, nil, false
}

// closeCount bounds the CONNECTION_CLOSE answers of one denied flow: a
// client that closes on the first one needs no more; one that lost it is
// answered again, at most every closeInterval and closeMax times in all.
type closeCount struct {
	n    int
	last time.Time
}

const (
	closeInterval = 100 * time.Millisecond
	closeMax      = 8
)

func (c *closeCount) allow(now time.Time) bool {
	if c.n >= closeMax || c.n > 0 && now.Sub(c.last) < closeInterval {
		return false
	}
	c.n++
	c.last = now
	return true
}

// closeLimiter bounds the answers of all denied flows together: at most
// closesPerSecond a second, so that a flood of spoofed Initial packets
// cannot turn egressd into a reflector; one source (an IPv6 /64) at most
// three quarters of them, so that one client retransmitting many denied
// flows' Initials leaves answers for everyone else's, who would otherwise
// wait out their timeout instead of falling back at once.
type closeLimiter struct {
	mu     sync.Mutex
	second int64
	n      int
	bySrc  map[netip.Addr]int // this second's answers per source
}

const (
	closesPerSecond = 1000
	// maxCloseSources bounds bySrc: past it within one second, a new
	// source (spoofed, in such numbers) gets no answer.
	maxCloseSources = 4096
)

func (l *closeLimiter) allow(now time.Time, src netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if sec := now.Unix(); sec != l.second {
		l.second, l.n = sec, 0
		clear(l.bySrc)
	}
	if l.bySrc == nil {
		l.bySrc = make(map[netip.Addr]int)
	}
	src = limit.Source(src)
	n, seen := l.bySrc[src]
	if l.n >= closesPerSecond || n >= limit.SourceShare(closesPerSecond) || !seen && len(l.bySrc) >= maxCloseSources {
		return false
	}
	l.n++
	l.bySrc[src] = n + 1
	return true
}

// parseHello parses a ClientHello handshake message; the Info views msg.
func parseHello(msg []byte) (*clienthello.Info, bool) {
	info := new(clienthello.Info)
	return info, clienthello.Parse(msg, info)
}

// leave gives the flow's place in Config.Admit's budget back, once.
func (f *flow) leave() {
	if release := f.admitted; release != nil {
		f.admitted = nil
		release()
	}
}
