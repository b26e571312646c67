package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/peek"
	"github.com/egressd/egressd/internal/refuse"
	"github.com/egressd/egressd/internal/relay"
	"github.com/egressd/egressd/internal/upstream"
)

// Connections set up on the relay loop.
//
// An sni or transparent listener's connections are accepted by a relay
// loop, not by the runtime (relay.Listener), and the loop sets up what it
// can without waiting: a client whose first bytes are a whole
// ClientHello, a name in the look-up cache, an allow. A transparent
// listener's client is asked for its original destination first (as
// original does), and, since such a listener does not defer accepts,
// may have sent nothing yet: a loop then waits for its first bytes until
// the first_bytes deadline (relay.Loops.AwaitReadable), and a client
// still silent then goes to a set-up goroutine, which takes it for a
// server-first protocol. The loop reads the hello (waiting for its rest
// when it came in parts), decides it exactly as handle does (judge),
// starts the dial (relay.Loops.DialAsync) and, once the connect has
// ended, attaches the client and relays, all on the loop's own goroutine. Through the runtime, each connection woke the
// runtime's poller for the accept, registered the socket with it and
// handed it to a set-up goroutine; measured on this path, a raw connection
// costs 13 % less CPU (docs/performance.md).
//
// Anything else goes to a set-up goroutine as before, with the session
// and the bytes read so far (promote): a hello not yet whole, anything but
// TLS, a name not cached, a refusal, a failed connect, a listener whose
// config changed to need more. Those take the path every other listener
// takes, from the peek on, so every decision is the one handle makes; the
// loop only ever acts on an allow that path would have made too.

// inlineEligible reports whether a listener's connections may be set up
// on a relay loop: an sni or transparent listener without a PROXY header
// to read first (explicit listeners speak first, and their exchanges need
// a goroutine).
func inlineEligible(lc *config.Listener) bool {
	return (lc.Mode == config.ModeSNI || lc.Mode == config.ModeTransparent) && !lc.ProxyProtocol
}

// startAccepting starts accepting on bl (under g.mu): on a relay loop for
// an eligible listener, else in an accept goroutine. A listener whose mode
// changes on a reload keeps its way of accepting until a restart; a loop
// hands connections it cannot set up to the goroutines.
func (g *Gateway) startAccepting(ctx context.Context, bl *boundListener) {
	if inlineEligible(bl.config()) {
		connCtx := g.setupCtx
		cached := upstream.CachedOnly(connCtx) // made once, not per connection
		x, err := g.loops.Listen(bl.ln,
			func(fd int, peer netip.AddrPort) { g.acceptInline(connCtx, cached, bl, fd, peer) },
			func(err error, backoff time.Duration) {
				g.metrics.AcceptError()
				g.log.Warn("accept failed; backing off", "listener", bl.config().Name, "err", err, "backoff", backoff)
			})
		if err == nil {
			bl.raw = x
			return
		}
		g.log.Warn("accepting in a goroutine: the relay loop cannot take the listener", "listener", bl.config().Name, "err", err)
	}
	g.wg.Add(1)
	go g.acceptLoop(ctx, g.setupCtx, bl)
}

// setDeferAccept sets TCP_DEFER_ACCEPT on the listening socket, wherever
// it is accepted on.
func (bl *boundListener) setDeferAccept(on bool) error {
	if bl.raw != nil {
		return bl.raw.Control(func(fd int) error { return listener.SetDeferAcceptFD(fd, on) })
	}
	return listener.SetDeferAccept(bl.ln, on)
}

// deferAccept reports whether TCP_DEFER_ACCEPT is on for the listening
// socket.
func (bl *boundListener) deferAccept() (bool, error) {
	if bl.raw != nil {
		var on bool
		err := bl.raw.Control(func(fd int) (err error) { on, err = listener.DeferAcceptFD(fd); return err })
		return on, err
	}
	return listener.DeferAccept(bl.ln)
}

// close stops accepting on bl, wherever it is accepted on.
func (bl *boundListener) close() {
	if bl.raw != nil {
		bl.raw.Close()
	}
	bl.ln.Close()
}

// acceptInline sets up a connection a relay loop accepted, on the loop's
// goroutine (see the top of this file): it never waits. cached is ctx
// under upstream.CachedOnly, for the decision.
func (g *Gateway) acceptInline(ctx, cached context.Context, bl *boundListener, fd int, src netip.AddrPort) {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	lc := bl.config()
	pendingSrc, ok := g.admitFD(fd, src, lc.ProxyProtocol)
	if !ok {
		return
	}
	st := g.state.Load()
	s := &session{g: g, st: st, lc: lc, bl: bl, pending: true, pendingSrc: pendingSrc, start: time.Now(), src: src, peer: src.Addr()}
	s.resetRecord()
	if !inlineEligible(s.lc) {
		g.promote(ctx, bl, fd, s, nil)
		return
	}
	cfg := st.Config
	if max := cfg.Limits.MaxConnectionsPerSource; max > 0 {
		if !g.sources.Acquire(src.Addr(), max) {
			g.promote(ctx, bl, fd, s, nil) // turned away there, with its line
			return
		}
		s.srcHeld = true
	}
	var orig netip.AddrPort
	if s.lc.Mode == config.ModeTransparent {
		o, redirected, err := listener.OriginalDstFD(fd)
		if err != nil || !g.intercepted(s.lc, o, redirected) {
			g.promote(ctx, bl, fd, s, nil) // turned away there, with its line
			return
		}
		orig, s.rec.Dst = o, o
	}
	buf := peek.Buffer()
	n, err := unix.Read(fd, buf[:cap(buf)])
	if err == unix.EAGAIN && s.lc.Mode == config.ModeTransparent {
		// A transparent listener does not defer accepts: the client's
		// first bytes are still on their way, or never come (a server
		// speaks first). A loop waits for them until the first_bytes
		// deadline, counted from the accept as the set-up goroutine
		// counts it; at the deadline the goroutine takes the connection
		// and finds the deadline passed.
		g.awaitInline(ctx, cached, bl, fd, s, orig, buf, s.start.Add(cfg.Timeouts.FirstBytes), 0)
		return
	}
	g.setUpInline(ctx, cached, bl, fd, s, orig, buf[:max(n, 0)], 0)
}

// maxInlineWaits bounds the waits for more of a hello on a loop (a hello
// in two or three segments); a client that trickles it goes on in a set-up
// goroutine, whose reads cost no loop time.
const maxInlineWaits = 3

// awaitInline waits on a loop for more of the client's bytes, after buf,
// until deadline, and goes on with them (setUpInline). A client that
// sent nothing by the first_bytes deadline goes to a set-up goroutine,
// which finds the deadline passed and takes it for server-first. One that
// closes, resets or misses the client_hello deadline is ended here, with
// the line the goroutine would write, since handing a socket to the
// runtime's poller needs a spare descriptor (a duplicate), which at the
// open-files limit only such endings free; once the drain is over, too.
func (g *Gateway) awaitInline(ctx, cached context.Context, bl *boundListener, fd int, s *session, orig netip.AddrPort, buf []byte, deadline time.Time, waits int) {
	g.wg.Add(1) // Serve waits for it as for a set-up goroutine
	g.loops.AwaitReadable(ctx, fd, deadline, func(readable bool) {
		defer g.wg.Done()
		switch {
		case readable:
			n, err := unix.Read(fd, buf[len(buf):cap(buf)])
			if n > 0 {
				g.setUpInline(ctx, cached, bl, fd, s, orig, buf[:len(buf)+n], waits+1)
				return
			}
			if n == 0 {
				err = io.EOF
			}
			g.endInline(fd, s, peek.Ended(buf, err))
		case ctx.Err() != nil:
			// The drain is over: set-ups give up, as relays are closed.
			s.rec.Protocol = peek.Unknown
			s.rec.Action, s.rec.Reason = accesslog.None, "waiting for the client's hello: "+context.Cause(ctx).Error()
			peek.Release(&peek.Result{Data: buf})
			unix.Close(fd)
			go g.endOffLoop(s)
		case len(buf) > 0:
			g.endInline(fd, s, peek.Ended(buf, peek.ErrHelloTimeout))
		default:
			g.promote(ctx, bl, fd, s, buf)
		}
	})
}

// endInline ends a connection whose first bytes failed on the loop (p, as
// peek.Ended makes it) as handle ends one whose peek failed: reset, and a
// line saying why.
func (g *Gateway) endInline(fd int, s *session, p peek.Result) {
	s.peeked(&p)
	s.peekFailed(p)
	peek.Release(&p)
	refuse.ResetFD(fd)
	go g.endOffLoop(s)
}

// setUpInline goes on from the client's first bytes, buf (a peek buffer):
// a whole hello that judge allows without waiting is dialled and relayed
// on the loop, anything else promoted. orig is a transparent listener's
// original destination.
//
// A hello bigger than a segment (a post-quantum key share makes most
// browsers' and Go's so on a 1500-byte path) comes in parts: the loop
// waits for the rest, up to maxInlineWaits times and the client_hello
// deadline, while the bytes fit the peek buffer (waits counts the waits
// so far).
func (g *Gateway) setUpInline(ctx, cached context.Context, bl *boundListener, fd int, s *session, orig netip.AddrPort, buf []byte, waits int) {
	st, cfg, src := s.st, s.st.Config, s.src
	p, ok, more := peek.Whole(buf)
	if !ok {
		if more && waits < maxInlineWaits && len(buf) < cap(buf) {
			g.awaitInline(ctx, cached, bl, fd, s, orig, buf, s.start.Add(cfg.Timeouts.ClientHello), waits)
			return
		}
		g.promote(ctx, bl, fd, s, buf)
		return
	}
	v := g.judge(cached, st, s.lc, &s.rec, &p, orig)
	if v.wouldBlock || g.refusing(st, v, &s.rec) {
		s.resetRecord() // the goroutine decides it afresh
		g.promote(ctx, bl, fd, s, keepData(&p))
		return
	}
	hw, err := newHelloWatch(&p, p.Data)
	if err != nil || upgradeBegun(&p) {
		// Refused there, with its line; or a ClientHello begins behind
		// other first bytes, which the goroutine decides as it waits.
		s.resetRecord()
		g.promote(ctx, bl, fd, s, keepData(&p))
		return
	}
	var w relay.Watch
	if hw != nil {
		w = hw
		s.onDecoy(ctx, hw, &s.rec, nil, orig)
	}
	s.dialled = v.dst // for a later hello's check (helloCheck)
	if upgradeWatched(&p) {
		w, _, _ = s.newUpgradeWatch(ctx, &p, p.Data, &s.rec, s.helloCheck(orig)) // scanning: upgradeBegun saw no hello's start
	}
	s.peeked(&p)
	var buf2 [maxDialAttempts]netip.AddrPort
	timeout := dialShare(cfg.Timeouts.Connect, len(v.candidates(buf2[:0]))) // the first attempt's, as dialVerdict's
	dialStart := time.Now()
	g.wg.Add(1) // Serve waits for a dial under way as for a set-up goroutine
	g.loops.DialAsync(ctx, v.dst, cfg.Mark, timeout, p.Data, func(rc *relay.Conn, err error) {
		defer g.wg.Done()
		if err != nil {
			// The goroutine tries the name's other answers, or refuses,
			// as relay does after a first failed attempt.
			s.failed = &failedDial{v.dst, err}
			s.resetRecord()
			g.promote(ctx, bl, fd, s, keepData(&p))
			return
		}
		g.metrics.Dial(time.Since(dialStart))
		s.rec.Dst, s.rec.Reason = v.dst, v.Reason
		first := len(p.Data)
		if err := rc.AttachFD(fd, src, p.Data, cfg.Timeouts.Idle, func(res relay.Result) {
			s.relayed(rc, &s.rec, res)
		}); err != nil {
			// Both sockets are closed; the line is written off the loop.
			s.rec.Reason = v.Reason + "; relay failed: " + err.Error()
			peek.Release(&p)
			go g.endOffLoop(s)
			return
		}
		s.rec.BytesUp = int64(first)
		peek.Release(&p)
		s.watch(rc, w)
		g.onLoop.Add(1)
		g.handOff(nil, rc)
	})
}

// resetRecord starts the session's line again, from the accept: for the
// set-up goroutine to decide the connection afresh.
func (s *session) resetRecord() {
	s.rec = s.record()
	s.rec.Start = s.start
}

// endOffLoop ends, on a goroutine of its own, a connection the loop took
// and could not relay or hand over: the line and the counts, as serveConn
// does for one that never reached the loop.
func (g *Gateway) endOffLoop(s *session) {
	s.finish()
	g.active.Add(-1)
}

// keepData releases what p holds but its bytes, which it returns: a
// promoted connection peeks again from them.
func keepData(p *peek.Result) []byte {
	data := p.Data
	p.Data = nil
	peek.Release(p)
	return data
}

// promote hands a connection the loop accepted to a set-up goroutine,
// with first, the bytes read from it so far (a peek buffer, or nil): the
// socket becomes a net.TCPConn (registered with the runtime's poller),
// and the session runs from its prelude, or from the peek when the loop
// took its source slot already.
func (g *Gateway) promote(ctx context.Context, bl *boundListener, fd int, s *session, first []byte) {
	g.promoteAfter(ctx, bl, os.NewFile(uintptr(fd), ""), s, first, 0)
}

// promoteAfter is promote, tried again after wait when the process had no
// descriptor to spare for the net.TCPConn (net.FileConn duplicates the
// socket): the connection waits, as it would have waited in the accept
// queue, rather than being dropped.
func (g *Gateway) promoteAfter(ctx context.Context, bl *boundListener, f *os.File, s *session, first []byte, wait time.Duration) {
	nc, err := net.FileConn(f)
	if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
		wait = min(max(2*wait, 5*time.Millisecond), time.Second)
		g.metrics.AcceptError()
		g.log.Warn("accept failed; backing off", "listener", bl.config().Name, "err", err, "backoff", wait)
		// f stays open and referenced (its finalizer would close it);
		// Serve waits for the retry as for a set-up goroutine.
		g.wg.Add(1)
		time.AfterFunc(wait, func() {
			defer g.wg.Done()
			g.promoteAfter(ctx, bl, f, s, first, wait)
		})
		return
	}
	f.Close()
	c, ok := nc.(*net.TCPConn)
	if err != nil || !ok {
		if nc != nil {
			nc.Close()
		}
		// Nothing the client sent is looked at: the connection ends as
		// one turned away would.
		if first != nil {
			peek.Release(&peek.Result{Data: first})
		}
		s.c = nil
		s.rec.Protocol = peek.Unknown
		s.rec.Action, s.rec.Enforced = accesslog.Deny, true
		s.rec.Reason = "could not hand the connection over: " + handOverError(err)
		go g.endOffLoop(s)
		return
	}
	s.c = c
	g.track(c, true)
	g.dispatch(ctx, job{bl: bl, c: c, s: s, first: first})
}

func handOverError(err error) string {
	if err == nil {
		return "not a TCP socket"
	}
	return err.Error()
}

// admitFD is admit for a socket a loop accepted.
func (g *Gateway) admitFD(fd int, src netip.AddrPort, proxied bool) (pendingSrc, ok bool) {
	pendingSrc, limit, max, ok := g.count(src.Addr(), proxied)
	if !ok {
		g.reject(src, limit, max, func() { refuse.ResetFD(fd) })
	}
	return pendingSrc, ok
}
