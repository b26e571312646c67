package gateway

import (
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
	w.version = p.Hello.RecordVersion
	w.r.Init(&p.Hello)
	if _, _, err := w.Client(data[p.HelloEnd:]); err != nil {
		w.Release()
		return nil, err
	}
	return w, nil
}

// helloWatches holds helloWatch values between connections (see
// relay.Watch.Release): every TLS connection takes one.
var helloWatches = sync.Pool{New: func() any { return new(helloWatch) }}

func (w *helloWatch) Release() { helloWatches.Put(w) }

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
	pass, v := w.r.Client(b)
	switch v {
	case clienthello.Refuse:
		return nil, relay.WatchOff, w.refusal(w.r.Why())
	case clienthello.Holding:
		return pass, relay.WatchHolding, nil
	case clienthello.Done:
		return pass, relay.WatchOff, nil
	}
	return pass, relay.WatchOn, nil
}

func (w *helloWatch) Server(b []byte) relay.WatchState {
	switch {
	case w.r.Server(b) == clienthello.Done:
		return relay.WatchEnded // answered, no retry: nothing of the client's to check
	case w.r.Answered():
		return relay.WatchOff // a retry: the client's second hello is watched
	}
	return relay.WatchOn
}

func (w *helloWatch) Expired() error {
	return w.refusal("client_hello timeout: the second ClientHello (after a HelloRetryRequest) is incomplete")
}

func (w *helloWatch) refusal(why string) error {
	alert := refuse.TLSAlertRecord(w.version, refuse.AlertAccessDenied)
	return &relay.Refusal{Why: why, Reply: alert[:]}
}
