package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/peek"
	"github.com/egressd/egressd/internal/refuse"
	"github.com/egressd/egressd/internal/relay"
)

// A decision on a ClientHello holds only if the server acts on that hello.
// A TLS 1.3 server that answers with a HelloRetryRequest acts on the
// client's second hello, which comes after the relay has begun; so every
// connection relayed after a decided hello is watched (helloWatch) until
// the server has answered: a second hello must name what the first did,
// and a handshake record before the answer is refused (clienthello.Retry).
// The watch reads the first bytes each way through the relay loop's
// buffer, which carries a handshake's small messages anyway, and is
// dropped once the server has answered: an idle relayed connection keeps
// nothing of it.

// helloWatch is relay.Watch over clienthello.Retry: its refusals answer
// the client with a TLS access_denied alert, in the first hello's record
// version.
type helloWatch struct {
	r       clienthello.Retry
	version uint16
	// A connection's first hello may be a decoy: allowed, and then not
	// the TLS its server reads (an SMTP server answers it "500", and
	// takes STARTTLS and a hello for a denied name next). So until the
	// server's first bytes begin a ServerHello (confirmed), the watch of
	// a first hello (decoy) refuses another hello in the client's bytes
	// (next), as no TLS client sends one before its answer; and client
	// bytes that are no TLS record, or a server answer that is no
	// ServerHello, hand the connection to an upgrade watch (up, made by
	// escalate once onDecoy gave the session's part), which reads the
	// client's bytes from there as any unknown connection's are. A watch
	// inside an upgrade watch is no decoy watch: its owner rescans.
	decoy     bool
	next      clienthello.Upgrade
	nextBase  int // next's offset in the client's bytes
	up        *upgradeWatch
	rc        *relay.Conn
	n         int // the client's bytes so far
	answer    serverAnswer
	confirmed bool
	// What an upgrade watch needs, from onDecoy: check decides its
	// hellos (nil: the session's helloCheck for orig).
	s     *session
	ctx   context.Context
	rec   *accesslog.Record
	check upgradeCheck
	orig  netip.AddrPort
}

// newHelloWatch returns the watch for a connection whose first bytes p
// carry a decided ClientHello, and that sends data (p.Data, and what else
// was read behind it) to the server first; nil, nil when p carries no
// hello. An error means the bytes behind the hello already break the
// rule (a handshake record, or no TLS record): the connection is refused
// (refuseBehindHello) before anything reaches the server.
func newHelloWatch(p *peek.Result, data []byte) (*helloWatch, error) {
	if p.Protocol != peek.TLS || !p.HelloOK {
		return nil, nil
	}
	w := helloWatches.Get().(*helloWatch)
	w.reset(p.Hello.RecordVersion)
	w.r.Init(&p.Hello)
	w.decoy, w.n, w.nextBase = true, p.HelloEnd, p.HelloEnd
	if _, _, err := w.Client(data[p.HelloEnd:]); err != nil {
		w.Release()
		return nil, err
	}
	return w, nil
}

// helloWatches holds helloWatch values between connections (see
// relay.Watch.Release): every TLS connection takes one.
var helloWatches = sync.Pool{New: func() any { return new(helloWatch) }}

func (w *helloWatch) Release() {
	if w.up != nil {
		w.up.Release()
	}
	w.reset(0)
	helloWatches.Put(w)
}

// reset makes a pooled watch new, for a hello in record version v.
func (w *helloWatch) reset(v uint16) { *w = helloWatch{r: w.r, version: v} }

// onDecoy gives hw (if not nil), the watch of a connection's first hello,
// what it needs to hand the connection to an upgrade watch should the
// hello prove a decoy (see helloWatch): its hellos are decided with check
// (nil: s.helloCheck(orig), made then), into rec. Nothing is allocated
// unless that happens.
func (s *session) onDecoy(ctx context.Context, hw *helloWatch, rec *accesslog.Record, check upgradeCheck, orig netip.AddrPort) {
	if hw != nil {
		hw.s, hw.ctx, hw.rec, hw.check, hw.orig = s, ctx, rec, check, orig
	}
}

// escalate hands the connection to an upgrade watch, which reads the
// client's bytes from byte base on; false if onDecoy was not called.
func (w *helloWatch) escalate(base int) bool {
	if !w.decoy || w.s == nil {
		return false
	}
	check := w.check
	if check == nil {
		check = w.s.helloCheck(w.orig)
	}
	w.up = w.s.upgradeWatch(w.ctx, w.rec, check)
	w.up.base, w.up.rc = base, w.rc
	w.next = clienthello.Upgrade{}
	return true
}

// watch has rc watched by w, if there is one (a *helloWatch or an
// *upgradeWatch), with the client_hello timeout for a held hello's rest.
func (s *session) watch(rc *relay.Conn, w relay.Watch) {
	switch w := w.(type) {
	case nil:
		return
	case *helloWatch:
		if w == nil {
			return
		}
		w.rc = rc
	case *upgradeWatch:
		if w == nil {
			return
		}
		w.rc = rc
		rc.Watch(w, s.st.Config.Timeouts.ClientHello)
		if w.holding() {
			rc.Holding() // a hello begun in the first bytes: client_hello to complete it
		}
		return
	}
	rc.Watch(w, s.st.Config.Timeouts.ClientHello)
}

// refuseBehindHello refuses a connection whose bytes behind its hello
// newHelloWatch refused, and says why in rec.
func (g *Gateway) refuseBehindHello(s *session, p *peek.Result, rec *accesslog.Record, err error) {
	rec.Action, rec.Enforced, rec.Rule = accesslog.Deny, true, "" // no rule denied it
	rec.Reason = err.Error() + " (was: " + rec.Reason + ")"
	refuse.TLSAlert(s.c, p.Hello.RecordVersion, refuse.AlertAccessDenied)
}

func (w *helloWatch) Client(b []byte) ([]byte, relay.WatchState, error) {
	if w.up != nil {
		return w.up.Client(b)
	}
	base := w.n
	w.n += len(b)
	pass, v := w.r.Client(b)
	if v == clienthello.Refuse {
		return nil, relay.WatchOff, w.refusal(w.r.Why())
	}
	if w.decoy && !w.confirmed {
		// Inside records that pass before the answer (application data,
		// alerts), or behind the hello in its own read: a server that
		// did not take the first hello may read this one.
		if why, found := anotherHello(&w.next, w.nextBase, b); found {
			return nil, relay.WatchOff, w.refusal(why)
		}
	}
	switch v {
	case clienthello.Holding:
		return pass, relay.WatchHolding, nil
	case clienthello.Done:
		if w.r.Untracked() && !w.confirmed && w.escalate(base) {
			// No TLS record, and no ServerHello yet: the hello was not
			// the TLS this server reads (yet). b is read from its start.
			return w.up.Client(b)
		}
		return pass, relay.WatchOff, nil
	}
	return pass, relay.WatchOn, nil
}

func (w *helloWatch) Server(b []byte) relay.WatchState {
	if w.up != nil {
		return w.up.Server(b)
	}
	if !w.decoy || w.confirmed {
		return w.server(b)
	}
	// The server's first bytes say whether it took up TLS.
	k, full := w.answer.add(b)
	if !full {
		return relay.WatchOn
	}
	if !w.answer.serverHello() && w.escalate(w.n) {
		return w.up.Server(b)
	}
	w.confirmed, w.next = true, clienthello.Upgrade{} // or no session's part: watched as before
	if st := w.server(w.answer.b[:]); st != relay.WatchOn {
		return st
	}
	return w.server(b[k:])
}

// anotherHello reads b, a client's next bytes behind an allowed hello
// whose server has not answered yet, with next, which scans them from the
// client's byte base on; it says why to refuse if they begin another
// hello, which no TLS client sends before its answer.
func anotherHello(next *clienthello.Upgrade, base int, b []byte) (why string, found bool) {
	if _, st := next.Client(b); st != clienthello.Scanning {
		return fmt.Sprintf("another ClientHello, at byte %d, before the server answered the one allowed", base+next.Offset()), true
	}
	return "", false
}

func (w *helloWatch) server(b []byte) relay.WatchState {
	switch {
	case w.r.Server(b) == clienthello.Done:
		return relay.WatchEnded // answered, no retry: nothing of the client's to check
	case w.r.Answered():
		return relay.WatchOff // a retry: the client's second hello is watched
	}
	return relay.WatchOn
}

func (w *helloWatch) Expired() error {
	if w.up != nil {
		return w.up.Expired()
	}
	return w.refusal("client_hello timeout: the second ClientHello (after a HelloRetryRequest) is incomplete")
}

func (w *helloWatch) refusal(why string) error {
	alert := refuse.TLSAlertRecord(w.version, refuse.AlertAccessDenied)
	return &relay.Refusal{Why: why, Reply: alert[:]}
}
