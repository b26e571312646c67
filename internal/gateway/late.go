package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/limit"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/peek"
	"github.com/egressd/egressd/internal/refuse"
	"github.com/egressd/egressd/internal/relay"
	"github.com/egressd/egressd/internal/upstream"
)

// A client that says nothing within first_bytes is decided as server-first
// (SMTP, MySQL: the server speaks, the client answers), on what egressd
// knows without its bytes. That decision is provisional. While the
// client stays silent, the server's bytes are copied to it; the client's
// first bytes, whenever they come, are identified and, if they carry a
// name (a TLS ClientHello, an HTTP request) or are an SSH banner (which
// rules can name), decided as if they had come early, before any of them
// reaches the server. A client could otherwise
// wait out first_bytes and then send an SNI the policy denies to a
// CDN-shared address it was allowed to reach by IP.
//
// The wait copies in user space with a small buffer (a server-first
// greeting is a few hundred bytes); once the client's bytes are decided,
// both sockets go to the relay loop like any other connection.

// dialNet dials v through net.Dialer, falling back over the name's answers
// as every dial does: the connection stays in the Go runtime while egressd
// still has to read and write it itself.
func dialNet(ctx context.Context, st *State, v *verdict) (*net.TCPConn, error) {
	return dialVerdict(ctx, v, st.Config.Timeouts.Connect, func(ctx context.Context, dst netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
		d := upstream.Dialer{Timeout: timeout, Mark: st.Config.Mark}
		return d.Dial(ctx, dst)
	})
}

// late carries an allowed server-first connection, with up already
// connected to the server, until the client's first bytes are decided;
// then it hands both to the relay loop. check decides bytes that carry a
// name (a ClientHello found later in the relay too: upgradeWatch), with
// ctx, on which the wait for a look-up ends; requests serves a client whose late bytes are HTTP (each request
// decided on its own) and logs it. It returns true when the connection was
// handed to the relay loop, which then logs rec; otherwise the caller logs
// it (unless requests took over: then rec.Action is "").
func (s *session) late(ctx context.Context, up *net.TCPConn, rec *accesslog.Record, check upgradeCheck, requests func(first []byte)) (relaying bool) {
	g, c, cfg := s.g, s.c, s.st.Config
	var p peek.Result
	defer peek.Release(&p)
	// A PostgreSQL SSLRequest or GSSENCRequest (peek.Result.Preamble) is
	// relayed and the watch goes on, up to latePreambles of them, for the
	// ClientHello that comes after the server's "S": decided so too, or it
	// would reach a server that routes on its name unread.
	for step := 0; ; step++ {
		// A silent client's wait holds two goroutines and a buffer, for
		// up to idle, where a relayed connection holds a few hundred
		// bytes: one source may hold its share of the pending places so,
		// as a crowd of silent handshakes may, and no more.
		share := limit.SourceShare(cfg.Limits.MaxPendingHandshakes)
		if share > 0 && !g.silentSources.Acquire(s.src.Addr(), share) {
			rec.Action, rec.Enforced, rec.Rule = accesslog.Deny, true, ""
			rec.Reason += fmt.Sprintf("; limit max_pending_handshakes: %s holds its share (%d) of server-first connections whose client is silent", s.src.Addr(), share)
			g.metrics.Rejected(metrics.LimitPendingPerSource)
			up.Close()
			refuse.Reset(c)
			return false
		}
		g.track(up, true) // a drain closes it, and so wakes the wait
		a := newAwait(c, up, cfg.Timeouts.Idle)
		waitStart := time.Now()
		err := a.clientSpeaks()
		if share > 0 {
			g.silentSources.Release(s.src.Addr())
		}
		if err == nil {
			now := time.Now()
			p = peek.Peek(c, peek.Deadlines{FirstBytes: now.Add(cfg.Timeouts.FirstBytes), Complete: now.Add(cfg.Timeouts.ClientHello)})
		}
		after := time.Since(waitStart).Round(time.Millisecond)
		if err == nil && p.Err == nil && p.Protocol == peek.Unknown && a.ssh.Load() {
			// The server's unprompted first bytes were an SSH banner:
			// the client's are SSH's too, whatever peek made of them (Go's
			// SSH servers skip lines before a banner), and rules naming
			// ssh hold for them.
			p.Protocol = peek.SSH
		}
		// A refusal, or an end, stops the server's copy first, so that
		// nothing it writes interleaves with the refusal.
		stop := func() {
			a.stop()
			g.track(up, false)
			rec.BytesDown += a.n
		}
		switch {
		case err != nil || p.Protocol == peek.ServerFirst:
			// The connection ended before the client said (more).
			stop()
			if err == nil {
				err = p.Err
			}
			rec.Reason += "; " + a.ended(err)
			up.Close()
			c.Close()
			return false
		case p.Err != nil:
			stop()
			rec.Protocol = p.Protocol
			rec.Action, rec.Enforced = accesslog.Deny, true
			rec.Reason = fmt.Sprintf("late first bytes after %v: %s (was: %s)", after, peekReason(p), rec.Reason)
			up.Close()
			refuse.Reset(c)
			return false
		case p.Protocol == peek.HTTP:
			// The server has seen no byte of this request: its connection
			// is dropped, and each request goes out on a connection of
			// its own.
			stop()
			up.Close()
			rec.Reason += fmt.Sprintf("; late first bytes after %v are HTTP: each request is decided and logged on its own", after)
			g.logConn(rec)
			rec.Action = ""
			requests(p.Data)
			return false
		case p.Protocol == peek.TLS, p.Protocol == peek.SSH:
			// A name, or a protocol that rules can name (protocols: [ssh]):
			// decided as if it had come early.
			was := rec.Reason
			if refused, _ := check(ctx, &p); refused {
				stop()
				rec.Reason = fmt.Sprintf("late first bytes after %v: %s (provisional decision was: %s)", after, rec.Reason, was)
				up.Close()
				g.refuse(c, p, rec.Rule)
				return false
			}
			rec.Reason = fmt.Sprintf("late first bytes after %v: %s", after, rec.Reason)
		default:
			// The client's answer in its own protocol (SMTP's EHLO, MySQL's
			// handshake response): what a server-first protocol is,
			// decided as such. A PostgreSQL request for TLS is relayed,
			// and what follows the server's answer is watched.
			rec.Reason += fmt.Sprintf("; client spoke after %v (%s)", after, p.Protocol)
			if p.Preamble && step+1 < latePreambles && !a.serverEnded() {
				// The copy stops before the request goes: its answer is
				// preambleAnswer's to read, not the copy's.
				stop()
				if !s.sendOn(up, &p, func() {}, rec) || !s.preambleAnswer(up, rec, false) {
					return false
				}
				continue
			}
		}
		// Allowed. The client's bytes go to the server at once, while the
		// server's answer may still come back through the copy: the
		// hand-over to the relay loop is kept off the first round trip.
		// What the copy has not read when it stops stays in the socket for
		// the loop. Not for a hello: the server's answer to it must be
		// read by the relay's watch (helloWatch), so the copy stops first.
		hw, err := newHelloWatch(&p, p.Data)
		if err != nil {
			stop()
			up.Close()
			g.refuseBehindHello(s, &p, rec, err)
			return false
		}
		var w relay.Watch
		if hw != nil {
			w = hw
			stop()
			stop = func() {}
		}
		// The client's own protocol may turn into TLS later (STARTTLS):
		// its bytes are read for a ClientHello (upgradeWatch); so may a
		// decoy's (a hello or an SSH banner the server does not take).
		s.onDecoy(ctx, hw, rec, check, netip.AddrPort{})
		var uw *upgradeWatch
		var first []byte
		if p.Protocol != peek.SSH || !a.ssh.Load() { // else SSH both ways: unwatched
			uw, first, err = s.newUpgradeWatch(ctx, &p, p.Data, rec, check)
		}
		if err != nil {
			stop()
			up.Close()
			s.refuseUpgrade(c, rec, err)
			return false
		}
		if uw != nil {
			w = uw
			p.Data = first
			if uw.decided() {
				// A hello decided in these bytes: its answer is the
				// watch's to read, not the copy's.
				stop()
				stop = func() {}
			}
		}
		if !s.sendOn(up, &p, stop, rec) {
			return false
		}
		rc, err := g.loops.Adopt(up)
		if err == nil {
			err = rc.Attach(c, nil, cfg.Timeouts.Idle, func(res relay.Result) {
				s.relayed(rc, rec, res)
			})
		}
		if err != nil {
			rec.Reason += "; relay failed: " + err.Error()
			refuse.Reset(c)
			return false
		}
		s.watch(rc, w)
		g.handOff(c, rc)
		return true
	}
}

// latePreambles bounds the PostgreSQL requests a late watch relays before
// the next message: a GSSENCRequest, refused, then an SSLRequest. Only
// these exact messages (peek.Result.Preamble) keep the watch going: a
// watch that went on for any message with nothing to decide took binary
// protocols' later messages (a TDS PRELOGIN carrying its TLS handshake, a
// MySQL statement of 22 bytes) for hellos and refused them, and a client
// could use its count up by splitting a preamble into segments.
const latePreambles = 3

// preambleAnswer passes on the server's one-byte answer to a PostgreSQL
// request just sent (S, N or G), read here, not by the watch's copy: a
// client must wait for it before its next bytes (libpq does), so bytes it
// sent before the answer came are refused, as bytes behind the request
// in its own segment are (peek.ErrPipelined). Otherwise a client that
// sent its hello at once would have it decided with the answer still
// unread in the server's socket, and the relay would read the answer as
// the server's to the hello, not the HelloRetryRequest after it
// (helloWatch). It reports false when the connection was ended (rec says
// why); behind says client bytes were read already, behind the request
// (by an explicit client's reader).
func (s *session) preambleAnswer(up *net.TCPConn, rec *accesslog.Record, behind bool) bool {
	cfg := s.st.Config
	var b [1]byte
	// A server answers such a request at once: the wait is the connect
	// timeout's, and a drain ends it.
	s.g.track(up, true)
	up.SetReadDeadline(time.Now().Add(cfg.Timeouts.Connect))
	_, err := io.ReadFull(up, b[:])
	up.SetReadDeadline(time.Time{})
	s.g.track(up, false)
	if err != nil {
		rec.Reason += "; upstream side ended before answering the PostgreSQL request: " + err.Error()
		up.Close()
		refuse.Reset(s.c)
		return false
	}
	if behind || hasBytes(s.c) {
		rec.Action, rec.Enforced = accesslog.Deny, true
		rec.Reason += "; " + peek.ErrPipelined.Error()
		up.Close()
		refuse.Reset(s.c)
		return false
	}
	s.c.SetReadDeadline(time.Time{})
	s.c.SetWriteDeadline(time.Now().Add(cfg.Timeouts.Idle))
	_, err = s.c.Write(b[:])
	s.c.SetWriteDeadline(time.Time{})
	if err != nil {
		rec.Reason += "; client side ended: " + err.Error()
		up.Close()
		s.c.Close()
		return false
	}
	rec.BytesDown++
	return true
}

// sendOn writes the client's bytes p to the server, then stops the
// server's copy (stop), and releases p; false when the server's side
// failed (the connection is then refused and its line says why).
func (s *session) sendOn(up *net.TCPConn, p *peek.Result, stop func(), rec *accesslog.Record) bool {
	up.SetWriteDeadline(time.Now().Add(s.st.Config.Timeouts.Idle))
	_, werr := up.Write(p.Data)
	up.SetWriteDeadline(time.Time{})
	stop()
	if werr != nil {
		rec.Reason += "; upstream side ended: " + werr.Error()
		up.Close()
		refuse.Reset(s.c)
		return false
	}
	rec.BytesUp += int64(len(p.Data))
	peek.Release(p)
	return true
}

// await copies a server's bytes to a silent client until the client
// speaks (or either ends), keeping the time of the last byte moved for
// the idle timeout.
type await struct {
	c, up *net.TCPConn
	idle  time.Duration
	last  atomic.Int64 // unix nanoseconds of the last byte moved
	n     int64        // bytes copied to the client; read after stop
	err   error        // how the copy ended, if not by stop; read after stop
	eof   bool         // the server closed its side
	// ssh: the server's first bytes were an SSH banner's start, so a
	// client banner after them is SSH's, not a decoy (upgradeWatch.ssh).
	ssh  atomic.Bool
	done chan struct{}
}

func newAwait(c, up *net.TCPConn, idle time.Duration) *await {
	a := &await{c: c, up: up, idle: idle, done: make(chan struct{})}
	a.last.Store(time.Now().UnixNano())
	go a.copyDown()
	return a
}

// copyDown is the server -> client half while the client is silent.
func (a *await) copyDown() {
	defer close(a.done)
	buf := make([]byte, 4096)
	for {
		n, err := a.up.Read(buf)
		if n > 0 {
			if a.n == 0 && n >= len("SSH-") && string(buf[:len("SSH-")]) == "SSH-" {
				a.ssh.Store(true)
			}
			a.last.Store(time.Now().UnixNano())
			a.c.SetWriteDeadline(time.Now().Add(a.idle))
			w, werr := a.c.Write(buf[:n])
			a.n += int64(w)
			if werr != nil {
				a.err = fmt.Errorf("client side ended: %w", werr)
				a.c.SetReadDeadline(time.Unix(1, 0)) // wake the wait
				return
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			// Passed on as a half-close: the client may still answer.
			a.eof = true
			a.c.CloseWrite()
			return
		case peek.TimedOut(err):
			return // stop
		default:
			a.err = fmt.Errorf("upstream side ended: %w", err)
			a.c.SetReadDeadline(time.Unix(1, 0))
			return
		}
	}
}

// serverEnded reports whether the server closed its side during the
// wait (its EOF was passed on): nothing more to watch for.
func (a *await) serverEnded() bool {
	select {
	case <-a.done:
		return a.eof
	default:
		return false
	}
}

// stop ends the copy; what it had read is written to the client first.
func (a *await) stop() {
	a.up.SetReadDeadline(time.Unix(1, 0))
	<-a.done
	a.up.SetReadDeadline(time.Time{})
	a.c.SetWriteDeadline(time.Time{})
	a.c.SetReadDeadline(time.Time{})
}

// clientSpeaks waits until the client has bytes to read (nil), has closed
// or reset, the copy failed, or nothing moved either way for idle.
func (a *await) clientSpeaks() error {
	for {
		err := waitReadable(a.c, time.Unix(0, a.last.Load()).Add(a.idle))
		if err == nil || !peek.TimedOut(err) {
			return err
		}
		select {
		case <-a.done:
			if a.err != nil {
				return a.err
			}
		default:
		}
		if time.Since(time.Unix(0, a.last.Load())) >= a.idle {
			return relay.ErrIdle
		}
	}
}

// ended words how a wait ended without the client's bytes.
func (a *await) ended(err error) string {
	switch {
	case errors.Is(err, relay.ErrIdle):
		return "closed: idle timeout"
	case errors.Is(err, io.EOF):
		return "client closed before sending anything"
	case a.err != nil && errors.Is(err, a.err):
		return err.Error()
	}
	return "client side ended: " + err.Error()
}

// waitReadable waits until c has bytes to read, without reading them
// (MSG_PEEK), or until deadline. It returns io.EOF when the client has
// closed with nothing to read.
func waitReadable(c *net.TCPConn, deadline time.Time) error {
	c.SetReadDeadline(deadline)
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, e := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case e == unix.EAGAIN || e == unix.EINTR:
			return false
		case e != nil:
			perr = e
		case n == 0:
			perr = io.EOF
		}
		return true
	})
	if err != nil {
		return err
	}
	return perr
}

// hasBytes reports whether c has bytes to read now, without reading them
// or waiting.
func hasBytes(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, _ = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	})
	return n > 0
}

// sameDst reports whether a late decision's destination is the address
// the connection is open to.
func sameDst(v verdict, dialled netip.AddrPort) bool {
	return !v.dst.IsValid() || v.dst == dialled || slices.Contains(v.answers, dialled.Addr()) && v.dst.Port() == dialled.Port()
}
