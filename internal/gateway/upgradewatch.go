package gateway

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/peek"
	"github.com/egressd/egressd/internal/refuse"
	"github.com/egressd/egressd/internal/relay"
	"github.com/egressd/egressd/internal/upstream"
)

// A connection decided without a ClientHello (server-first, or first
// bytes that are no TLS, HTTP or SSH) may turn into TLS later: SMTP's
// STARTTLS, IMAP's, POP3's STLS, FTP's AUTH TLS, LDAP's StartTLS, XMPP's
// <starttls/>, MySQL's SSL request. Its ClientHello names a server as any
// other does, and a server that routes or picks its certificate on that
// name would act on a name the policy was never asked about. So the
// client's bytes of such a connection are read for a hello for as long
// as it lasts (clienthello.Upgrade), wherever it starts, and a hello
// found is decided as a late one is, before the server has it whole: a
// deny ends the connection with an access_denied alert. An allowed hello
// is then watched as every decided hello is (helloWatch), and once the
// server has answered it the connection is relayed unread both ways.
//
// Until then the client's bytes go through the relay loop's buffer, not
// spliced; the server's are spliced. The check runs on the relay loop,
// so it must not wait: a decision that needs a look-up egressd has not
// cached (sni_destination: verify or resolve for a name this client did
// not resolve through egressd) holds the hello while a goroutine looks
// the name up, then asks the loop again (relay.Conn.Poke).

// upgradeCheck decides a ClientHello q found part-way through a
// connection, under ctx (upstream.CachedOnly on the relay loop). It fills
// rec as judge does and reports whether the connection is refused, or
// that deciding needs a look-up not in the cache (wouldBlock).
type upgradeCheck func(ctx context.Context, q *peek.Result) (refused, wouldBlock bool)

// upgradeWatch is relay.Watch over clienthello.Upgrade, then, once the
// hello it found is allowed, over that hello's helloWatch.
type upgradeWatch struct {
	u     clienthello.Upgrade
	hello *helloWatch // the allowed hello's watch, once there is one
	check upgradeCheck
	rec   *accesslog.Record
	// cached is the loop's context for check; lookup looks a name up off
	// the loop; rc is the connection, for Poke.
	cached context.Context
	lookup func(name string) error
	spawn  func(func())
	rc     *relay.Conn
	// looking: a look-up is under way; looked is set when it is done
	// (by its goroutine); lookedUp: a check already waited for one.
	looking, lookedUp bool
	looked            atomic.Bool
	lookErr           atomic.Pointer[error] // if the look-up failed
	lookName          string
	// next reads the client's bytes for a hello from the allowed
	// hello's second byte on, until the server has answered it; base
	// and nextBase are u's and next's offsets in the client's bytes.
	next           clienthello.Upgrade
	base, nextBase int
	// answer is the server's first bytes after an allowed hello, and
	// answered says they began a ServerHello.
	answer   serverAnswer
	answered bool
	// first is the line as the connection was first decided (firstSet:
	// kept), from which every hello's check starts, so that a line's
	// reason stays one decision long however many hellos come; before
	// is the line before the current hello's check (wasSet: kept), put
	// back while a look-up runs.
	first, before    accesslog.Record
	firstSet, wasSet bool
	// reportDeny and reportRule are the first hello's reason and rule
	// that report-only mode let through although the policy denies it.
	reportDeny, reportRule string
	// at and version are the allowed hello's offset and record
	// version, once u has let it go.
	at      int
	version uint16
	// rescans counts the allowed hellos that started no TLS.
	rescans int
	// junk reads the client's bytes from the first for an HTTP request
	// line behind bytes Netty skips (peek.JunkRequest).
	junk peek.JunkRequest
	// later reads them for an HTTP request behind a first request in
	// another protocol's version (peek.LaterRequest), when other: the
	// first bytes were one.
	later peek.LaterRequest
	other bool
	// ssh: the first bytes were an SSH banner, which the server's own
	// bytes confirm (sshServer): the watch then ends. A server that
	// answers otherwise does not speak SSH, and the banner was a decoy:
	// the client's bytes are read on as any unknown connection's.
	ssh       bool
	sshServer sshServer
	// sshDone: the server's bytes were read for an SSH server's
	// (sshServer), and that is settled; pending is the refusal a
	// decision made on the server's bytes came to, for the client's next
	// bytes.
	sshDone bool
	pending error
}

// sshServer follows a server's first bytes for what an SSH server sends
// (RFC 4253 §4.2, §7.1): maybe other lines, its version line, then the
// binary packet of its SSH_MSG_KEXINIT. The version line alone proves
// nothing: an IMAP server answers a client's "SSH-2.0-x" with a line
// that starts with it (the tag it was given, "SSH-2.0-x BAD …"); no text
// protocol follows a line with a packet length's NUL bytes and message
// 20.
type sshServer struct {
	st   uint8 // sshLineStart, sshLine, sshVersion, sshPacket
	seen int   // bytes read
	m    int   // bytes of "SSH-" matched, or of hdr filled
	hdr  [6]byte
}

const (
	sshLineStart uint8 = iota
	sshLine            // a line other than the version line
	sshVersion         // the version line
	sshPacket          // the packet after it
)

// sshServerMax bounds what is read for the version line and the packet
// header: lines before the version line are few and short.
const sshServerMax = 4096

// feed reads b, the server's next bytes, and reports whether it is done
// and, if so, whether the server speaks SSH.
func (s *sshServer) feed(b []byte) (done, ssh bool) {
	for _, c := range b {
		if s.seen++; s.seen > sshServerMax {
			return true, false
		}
		switch s.st {
		case sshLineStart, sshLine:
			switch {
			case c == '\n':
				s.st, s.m = sshLineStart, 0
			case s.st == sshLineStart && c == "SSH-"[s.m]:
				if s.m++; s.m == len("SSH-") {
					s.st = sshVersion
				}
			default:
				s.st = sshLine
			}
		case sshVersion:
			if c == '\n' {
				s.st, s.m = sshPacket, 0
			}
		case sshPacket:
			s.hdr[s.m] = c
			if s.m++; s.m < len(s.hdr) {
				continue
			}
			l := int(s.hdr[0])<<24 | int(s.hdr[1])<<16 | int(s.hdr[2])<<8 | int(s.hdr[3])
			return true, l > 0 && l <= 35000 && s.hdr[4] >= 4 && s.hdr[5] == 20 // RFC 4253 §6.1, §12
		}
	}
	return false, false
}

// maxHeldBehind bounds what a client may send behind a hello while it is
// decided: a TLS client waits for the server's answer.
const maxHeldBehind = 2 * clienthello.MaxHelloLen

// newUpgradeWatch returns the watch of a connection decided without a
// hello whose client sent data first (p says how it was identified); nil
// for a connection that is not watched so (a hello, HTTP, SSH). first is
// the part of data to send at once: the rest began a hello, which the
// watch holds until it is whole. A hello whole in data already is decided
// here, with ctx (the caller's goroutine may wait): err is then the
// refusal, and nothing was sent.
func (s *session) newUpgradeWatch(ctx context.Context, p *peek.Result, data []byte, rec *accesslog.Record, check upgradeCheck) (w *upgradeWatch, first []byte, err error) {
	if !upgradeWatched(p) {
		return nil, data, nil
	}
	w = s.upgradeWatch(ctx, rec, check)
	w.other, w.ssh = p.OtherRequest, p.Protocol == peek.SSH
	if w.junk.Feed(data) || w.other && w.later.Feed(data) {
		return nil, nil, junkRefusal(rec)
	}
	first, st := w.u.Client(data)
	switch st {
	case clienthello.HelloRefused:
		return nil, nil, w.refusal(w.u.Why())
	case clienthello.HelloFound:
		q := w.found()
		refused, wouldBlock := w.decide(ctx, &q)
		switch {
		case wouldBlock:
			// Not from a goroutine that may wait (every caller's is).
			return nil, nil, w.refusal("the ClientHello's decision needs a look-up this caller cannot wait for")
		case refused:
			return nil, nil, w.refusal("")
		}
		pass, err := w.allowed(q)
		if err != nil {
			return nil, nil, err
		}
		return w, append(first, pass...), nil
	}
	return w, first, nil
}

func (w *upgradeWatch) Client(b []byte) ([]byte, relay.WatchState, error) {
	if w.pending != nil {
		return nil, relay.WatchOff, w.pending
	}
	if w.junk.Feed(b) || w.other && w.later.Feed(b) {
		return nil, relay.WatchOff, junkRefusal(w.rec)
	}
	if w.hello == nil {
		return w.scan(b)
	}
	if !w.answered {
		// Until the server has begun a ServerHello, the allowed hello
		// may not be the TLS it reads: its protocol may have taken the
		// hello's bytes for its own and read TLS from here. The
		// client's bytes are read for a hello all the same (next), and
		// one found is refused: no TLS client sends another before
		// its server answered. (After a HelloRetryRequest the second
		// hello is Retry's to check.)
		if why, found := anotherHello(&w.next, w.nextBase, b); found {
			return nil, relay.WatchOff, w.refusal(why)
		}
	}
	pass, st, err := w.hello.Client(b)
	if err != nil || w.answered || !w.hello.r.Untracked() {
		return pass, st, err
	}
	// Bytes that are no TLS record before any ServerHello: the hello
	// did not start TLS here (it was the client's own protocol's
	// payload, or the server refused it and reads on). The client's
	// bytes are read for a hello again, by the scan that read them
	// since the hello.
	w.rescan()
	return b, relay.WatchOn, nil
}

// maxUntakenHellos bounds the hellos a connection may have allowed that
// its server did not answer as TLS: each is parsed and decided, maybe
// after a look-up of the name it gives, and a protocol upgrades once.
// A hello found after that many is refused.
const maxUntakenHellos = 16

// rescan drops an allowed hello's watch and reads the client's bytes for
// a hello again, with the scan that has read them since (next).
func (w *upgradeWatch) rescan() {
	w.hello.Release()
	w.rescans++
	w.hello, w.answer, w.answered = nil, serverAnswer{}, false
	w.u, w.next = w.next, clienthello.Upgrade{}
	w.base = w.nextBase
	w.looking, w.lookedUp, w.wasSet = false, false, false
	w.looked.Store(false)
	w.lookErr.Store(nil)
}

// offset is the hello's offset in the client's bytes.
func (w *upgradeWatch) offset() int {
	if w.hello != nil {
		return w.at
	}
	return w.base + w.u.Offset()
}

// scan reads the client's bytes b for a hello (clienthello.Upgrade).
func (w *upgradeWatch) scan(b []byte) ([]byte, relay.WatchState, error) {
	pass, st := w.u.Client(b)
	switch st {
	case clienthello.Scanning:
		return pass, relay.WatchOn, nil
	case clienthello.HelloHeld:
		return pass, relay.WatchHolding, nil
	case clienthello.HelloRefused:
		return nil, relay.WatchOff, w.refusal(w.u.Why())
	}
	// HelloFound: decide it, unless a look-up it needs is under way.
	if w.rescans >= maxUntakenHellos {
		return nil, relay.WatchOff, w.refusal(fmt.Sprintf("a ClientHello after %d allowed that started no TLS: no protocol upgrades that often", w.rescans))
	}
	if w.u.HeldBytes() > clienthello.MaxHelloLen+maxHeldBehind {
		return nil, relay.WatchOff, w.refusal("more bytes behind the ClientHello than a TLS client sends before its answer")
	}
	if w.looking {
		if !w.looked.Load() {
			return pass, relay.WatchHolding, nil
		}
		w.looking, w.lookedUp = false, true
	}
	q := w.found()
	refused, wouldBlock := w.decide(w.cached, &q)
	switch {
	case wouldBlock && w.lookedUp:
		// Looked up, yet not in the cache (an answer with no lifetime):
		// the decision cannot be made on the loop.
		why := "the ClientHello's name was looked up, but the answer was not kept to decide on"
		if err := w.lookErr.Load(); err != nil {
			why = "looking up the ClientHello's name: " + (*err).Error()
		}
		return nil, relay.WatchOff, w.refusal(why)
	case wouldBlock:
		w.looking = true
		w.spawn(w.lookUp)
		return pass, relay.WatchHolding, nil
	case refused:
		return nil, relay.WatchOff, w.refusal("")
	}
	released, err := w.allowed(q)
	if err != nil {
		return nil, relay.WatchOff, err
	}
	return append(pass, released...), relay.WatchBoth, nil
}

// lookUp looks the held hello's name up, off the loop, and has the loop
// decide the hello again.
func (w *upgradeWatch) lookUp() {
	if err := w.lookup(w.lookName); err != nil {
		w.lookErr.Store(&err)
	}
	w.looked.Store(true)
	w.rc.Poke()
}

// decide runs the check on q, keeping the reason of the decision made
// before it for the line.
func (w *upgradeWatch) decide(ctx context.Context, q *peek.Result) (refused, wouldBlock bool) {
	if !w.firstSet {
		w.first, w.firstSet = *w.rec, true
	}
	if !w.wasSet {
		w.before, w.wasSet = *w.rec, true
	}
	setDecision(w.rec, &w.first)
	refused, wouldBlock = w.check(ctx, q)
	if wouldBlock {
		// Nothing decided yet: the line says what it said, should the
		// connection end meanwhile. The name to look up is the check's.
		w.lookName = w.rec.FQDN
		setDecision(w.rec, &w.before)
	}
	return refused, wouldBlock
}

// holding reports whether the watch holds the start of a hello already
// (from the bytes it was made with).
func (w *upgradeWatch) holding() bool {
	return w.hello == nil && w.u.HeldBytes() > 0
}

// decided reports whether the watch decided a hello already (one in the
// bytes it was made with).
func (w *upgradeWatch) decided() bool { return w.hello != nil }

// setDecision puts from's decision into rec: what a check writes (the
// name and its source, protocol, ALPN, ECH, JA4, destination, rule,
// action, enforcement, reason), not the bytes and times the connection's
// callers count into rec meanwhile.
func setDecision(rec, from *accesslog.Record) {
	rec.Dst, rec.FQDN, rec.FQDNSource, rec.Protocol = from.Dst, from.FQDN, from.FQDNSource, from.Protocol
	rec.ALPN, rec.ECH, rec.JA4 = from.ALPN, from.ECH, from.JA4
	rec.Rule, rec.Action, rec.Enforced, rec.Reason = from.Rule, from.Action, from.Enforced, from.Reason
}

// found returns the hello found, as a peek.Result for the check.
func (w *upgradeWatch) found() peek.Result {
	return peek.Result{Protocol: peek.TLS, HelloOK: true, Hello: *w.u.Hello()}
}

// allowed goes on from an allowed hello q: what is to be written on now,
// and the watch of q's answer (an error if the bytes behind q already
// break its rules).
func (w *upgradeWatch) allowed(q peek.Result) ([]byte, error) {
	w.note()
	pass, behind, ok := w.u.Release()
	if !ok {
		return nil, w.refusal("the ClientHello ended in bytes passed on before it was recognised")
	}
	// A start inside the hello, or behind it, is another hello: the
	// server's protocol may have taken the first's bytes as its own
	// and read TLS from the second. Refused; what follows is read on
	// from here until the server answers.
	at := w.offset()
	w.next, w.nextBase = clienthello.Upgrade{}, at+1
	if _, st := w.next.Client(w.u.Held()[1:]); st != clienthello.Scanning {
		return nil, w.refusal(fmt.Sprintf("another ClientHello, at byte %d, inside the one allowed or right behind it", w.nextBase+w.next.Offset()))
	}
	hw := helloWatches.Get().(*helloWatch)
	hw.version = q.Hello.RecordVersion
	hw.r.Init(&q.Hello)
	passBehind, _, err := hw.Client(behind)
	if err != nil {
		hw.Release()
		return nil, err
	}
	w.hello, w.answer, w.answered = hw, serverAnswer{}, false
	// What u held is passed on (released views it): u lets it go, so
	// that a connection waiting for the server's answer keeps no
	// hello's buffers.
	w.at, w.version, w.u = at, q.Hello.RecordVersion, clienthello.Upgrade{}
	return append(pass[:len(pass)-len(behind):len(pass)-len(behind)], passBehind...), nil
}

// upgradeWatch returns a new upgrade watch that decides the hellos it
// finds with check, into rec, and looks their names up under ctx.
func (s *session) upgradeWatch(ctx context.Context, rec *accesslog.Record, check upgradeCheck) *upgradeWatch {
	g, timeout := s.g, s.st.Config.Timeouts.Connect
	return &upgradeWatch{check: check, rec: rec, cached: upstream.CachedOnly(ctx), lookup: func(name string) error {
		lctx, cancel := context.WithTimeout(upstream.WithSource(ctx, s.src.Addr()), timeout)
		defer cancel()
		_, err := g.lookups.Resolve(lctx, name)
		return err
	}, spawn: func(f func()) {
		// Counted as the gateway's other goroutines are: its connection
		// holds a count meanwhile, so Serve's wait is not at zero.
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			f()
		}()
	}}
}

// note words the decision on the hello in the line's reason.
func (w *upgradeWatch) note() {
	if w.rec.Reason == w.first.Reason { // a tunnel's check keeps the tunnel's reason
		w.rec.Reason = fmt.Sprintf("ClientHello after %d bytes: %s", w.offset(), w.rec.Reason)
	} else {
		w.rec.Reason = fmt.Sprintf("ClientHello after %d bytes: %s (decision before it: %s)", w.offset(), w.rec.Reason, w.first.Reason)
	}
	// A hello denied in report-only mode stays in the line: a later one
	// allowed on the connection does not make it an allow.
	switch {
	case w.rec.Action == accesslog.Deny && !w.rec.Enforced && w.reportDeny == "":
		w.reportDeny, w.reportRule = w.rec.Reason, w.rec.Rule
	case w.reportDeny != "" && w.rec.Action != accesslog.Deny:
		w.rec.Action, w.rec.Rule = accesslog.Deny, w.reportRule
		w.rec.Reason += "; an earlier one, not enforced: " + w.reportDeny
	}
}

// redecide decides the connection again as protocol, which the server's
// bytes showed (why says how), and returns the refusal if that is a deny,
// or if deciding needs a look-up the relay loop cannot wait for.
func (w *upgradeWatch) redecide(protocol, why string) error {
	q := peek.Result{Protocol: protocol}
	refused, wouldBlock := w.decide(w.cached, &q)
	w.wasSet = false
	if wouldBlock {
		w.rec.Action, w.rec.Enforced, w.rec.Rule = accesslog.Deny, true, ""
		w.rec.Reason = why + ": deciding it as " + protocol + " needs a look-up the relay loop cannot wait for"
		return &relay.Refusal{Why: w.rec.Reason}
	}
	w.rec.Reason = fmt.Sprintf("%s: decided again as %s: %s (decision before it: %s)", why, protocol, w.rec.Reason, w.first.Reason)
	if !refused {
		return nil
	}
	return &relay.Refusal{Why: "the connection, decided again as " + protocol + ", is denied"}
}

// junkRefusal refuses a connection whose client sent an HTTP request
// that peek did not see in its first bytes: a line behind bytes Netty's
// decoder skips (control bytes, whitespace), or a request behind a first
// one in another protocol's version (RTSP's), which Netty also serves.
// Such a server reads the request and serves the Host it names, which
// nothing decided.
func junkRefusal(rec *accesslog.Record) error {
	rec.Action, rec.Enforced, rec.Rule = accesslog.Deny, true, ""
	return &relay.Refusal{Why: "an HTTP request that the first bytes did not show (behind control bytes, or behind another protocol's request), which an HTTP server may serve on the Host it names: refused",
		Reply: []byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")}
}

// refusal ends the connection with an access_denied alert, the TLS the
// client has begun. why is empty for a deny the check made (its rule and
// reason are in the line already).
func (w *upgradeWatch) refusal(why string) error {
	if why == "" {
		w.note()
		why = "the ClientHello after the upgrade was denied"
	} else {
		// No rule denied it: what came was no hello to decide.
		w.rec.Action, w.rec.Enforced, w.rec.Rule = accesslog.Deny, true, ""
		why = fmt.Sprintf("ClientHello after %d bytes: %s", w.offset(), why)
	}
	v := w.u.Hello().RecordVersion
	if w.hello != nil {
		v = w.version
	}
	alert := refuse.TLSAlertRecord(v, refuse.AlertAccessDenied)
	return &relay.Refusal{Why: why, Reply: alert[:]}
}

func (w *upgradeWatch) Server(b []byte) relay.WatchState {
	if len(b) > 0 {
		w.junk.Stop()
	}
	switch {
	case w.hello == nil && !w.sshDone:
		// The server's first bytes say whether it speaks SSH. After a
		// client's banner, one that does not was answering a decoy, and
		// the client's bytes are read on as any unknown connection's.
		// After other bytes, one that does makes the connection SSH:
		// the client sent a banner egressd did not know (Go's SSH
		// servers skip lines before it; OpenSSH reads "SSH-2.0-x *
		// RTSP/1.0" as a banner with a comment), and it is decided again
		// as ssh, so that a rule naming ssh holds; a deny refuses the
		// client's next bytes.
		done, ssh := w.sshServer.feed(b)
		if !done {
			return relay.WatchOn
		}
		w.sshDone = true
		switch {
		case ssh && w.ssh:
			return relay.WatchEnded // SSH, both ways: nothing more to read
		case ssh:
			if w.pending = w.redecide(peek.SSH, "the server answered as an SSH server"); w.pending == nil {
				return relay.WatchEnded
			}
		}
		return relay.WatchOff
	case w.hello == nil:
		return relay.WatchOff // read again once a hello is allowed (WatchBoth)
	case w.answered:
		return w.hello.Server(b)
	}
	// The server's first bytes after the hello say whether it took up
	// TLS: only a ServerHello (or HelloRetryRequest) does. Anything else
	// (an alert, its own protocol's words) leaves the connection as it
	// was, and the client's bytes are read for a hello again.
	k, full := w.answer.add(b)
	if !full {
		return relay.WatchOn
	}
	if !w.answer.serverHello() {
		w.rescan()
		return relay.WatchOff
	}
	w.answered = true
	if st := w.hello.Server(w.answer.b[:]); st != relay.WatchOn {
		return st
	}
	return w.hello.Server(b[k:])
}

// serverAnswer gathers a server's first bytes, as many as
// serverHelloStart needs, over as many reads as they take.
type serverAnswer struct {
	b [6]byte
	n int
}

// add takes b's first bytes in; k is how many, and full says all are in.
func (a *serverAnswer) add(b []byte) (k int, full bool) {
	k = copy(a.b[a.n:], b)
	a.n += k
	return k, a.n == len(a.b)
}

func (a *serverAnswer) serverHello() bool { return serverHelloStart(a.b[:]) }

// serverHelloStart says whether b, a server's first bytes, begin a
// handshake record that carries a ServerHello.
func serverHelloStart(b []byte) bool {
	if len(b) < 6 || b[0] != 22 || b[1] != 3 || b[2] > 4 || b[5] != 2 {
		return false
	}
	// A record that can hold a ServerHello's fixed fields (version,
	// random, session id length, suite, compression: 38 bytes and its
	// header), within what a record may be.
	l := int(b[3])<<8 | int(b[4])
	return l >= 4+38 && l <= 1<<14+256
}

func (w *upgradeWatch) Expired() error {
	switch {
	case w.hello != nil:
		return w.hello.Expired()
	case w.looking:
		return w.refusal("client_hello timeout: the look-up of " + w.lookName + " to decide the ClientHello did not finish")
	}
	return w.refusal("client_hello timeout: the ClientHello after the upgrade is incomplete")
}

func (w *upgradeWatch) Release() {
	if w.hello != nil {
		w.hello.Release()
		w.hello = nil
	}
}

// upgradeWatched reports whether a connection whose first bytes are p is
// read for a later hello: one decided without a hello, and not HTTP
// (served request by request). SSH is, until its server's banner shows
// it is SSH (upgradeWatch.ssh). Callers ask before they make the check a
// watch needs, which TLS connections, most of them, never do (their
// helloWatch makes one only if the hello proves a decoy).
func upgradeWatched(p *peek.Result) bool {
	return p.Protocol == peek.Unknown || p.Protocol == peek.ServerFirst || p.Protocol == peek.SSH
}

// upgradeBegun reports whether first bytes p, of a connection that would
// be watched for an upgrade, already begin a ClientHello behind other
// bytes: a relay loop, which must not wait for its decision, leaves the
// connection to a goroutine.
func upgradeBegun(p *peek.Result) bool {
	if !upgradeWatched(p) {
		return false
	}
	var u clienthello.Upgrade
	_, st := u.Client(p.Data)
	return st != clienthello.Scanning
}
