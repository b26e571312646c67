package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/fqdn"
	"github.com/egressd/egressd/internal/httpconnect"
	"github.com/egressd/egressd/internal/peek"
	"github.com/egressd/egressd/internal/policy"
	"github.com/egressd/egressd/internal/refuse"
	"github.com/egressd/egressd/internal/relay"
	"github.com/egressd/egressd/internal/socks5"
	"github.com/egressd/egressd/internal/upstream"
)

// An explicit listener serves clients configured to use egressd as their
// proxy: HTTP (CONNECT, and absolute-URI requests forwarded one by one) and
// SOCKS5 on one port. A SOCKS5 client's first byte is always 5, which no
// HTTP method starts with, so one byte tells them apart (the idea of
// tailscale's net/proxymux).
//
// The client names its destination; from there on the pipeline is the sni
// mode's: names are resolved by egressd and every answer checked
// (DecideDial), IP literals are checked the same way, the checked address
// is dialled, and the tunnel is spliced. Each tunnel, and each forwarded
// plain HTTP request, is one access-log line.

// readerPool holds the handshake readers; each can hold a whole request
// head (httpconnect.DefaultLimits.Head).
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, httpconnect.DefaultLimits.Head) }}

// explicitConn is one client connection of an explicit listener (or a
// plain HTTP connection served request by request): its session and the
// reader its proxy handshake and request heads are read through.
type explicitConn struct {
	*session
	br *bufio.Reader
	// pinned: the requests read are decided by one decision made for
	// all of them (a tunnel's), which a reload does not remake: the
	// connection ends at the next request instead (requestLoop).
	pinned bool
}

// serveExplicit serves one client of an explicit listener after the
// prelude every listener shares. The connection counts as a pending
// handshake (max_pending_handshakes) until its proxy request is read. It
// returns true when a tunnel was handed to the relay loop, which then ends
// the connection.
func (s *session) serveExplicit(ctx context.Context) (relaying bool) {
	g, st, c := s.g, s.st, s.c
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(c)
	x := &explicitConn{session: s, br: br}
	defer x.releaseReader()
	defer x.handshakeDone()

	// A proxy client speaks first, at once: the whole handshake must be in
	// within client_hello.
	c.SetReadDeadline(x.start.Add(st.Config.Timeouts.ClientHello))
	first, err := br.Peek(1)
	if err != nil {
		rec := x.record()
		rec.Protocol = peek.ServerFirst
		rec.Action, rec.Reason = accesslog.Deny, "explicit proxy: "+handshakeError(err, "client sent nothing")
		if closedEarly(err) {
			rec.Action = accesslog.None
		}
		g.logConn(&rec)
		refuse.Reset(c)
		return false
	}
	if first[0] == socks5.Version {
		return x.serveSOCKS(ctx)
	}
	if first[0] == 0x16 {
		// A TLS handshake record: the client was given an https:// proxy
		// URL. This listener speaks plain HTTP and SOCKS5, so it says so
		// at once instead of waiting out client_hello for a request line.
		rec := x.record()
		rec.Protocol = peek.TLS
		rec.Action, rec.Enforced = accesslog.Deny, true
		rec.Reason = "explicit proxy: the client speaks TLS (an https:// proxy URL?); this listener speaks plain HTTP and SOCKS5: use http://"
		g.logConn(&rec)
		refuse.TLSAlert(c, 0x0301, refuse.AlertProtocolVersion)
		return false
	}
	return x.serveHTTP(ctx)
}

// releaseReader gives the handshake reader back to the pool: a tunnel
// releases it before relaying, so an idle tunnel holds no 32 KiB buffer.
func (x *explicitConn) releaseReader() {
	if x.br != nil {
		x.br.Reset(nil)
		readerPool.Put(x.br)
		x.br = nil
	}
}

// target is the destination an explicit client asked for: a normalised
// name or an address, and a port.
type target struct {
	name string
	addr netip.Addr
	port uint16
}

// decide runs the policy for t: a name is resolved and all its answers
// checked, an address is checked as it is. unresolved reports a name
// without an address that the policy allowed, or that only the default
// denied: the client is told the server cannot be reached (502, SOCKS
// 0x04) rather than that policy denied it, since a rule with destinations
// might have allowed its address. A rule that denies the name without an
// address still gets its 403.
func (x *explicitConn) decide(ctx context.Context, t target, user string, rec *accesslog.Record) (v verdict, unresolved bool) {
	in := policy.Input{Src: x.src.Addr(), FQDN: t.name, Port: t.port, User: user}
	if t.name != "" {
		v = x.g.resolved(ctx, x.st, in, t.port)
		// The verdict keeps the decision made without an address: no
		// second Decide.
		unresolved = v.noAddr && (v.unreachable || v.Index < 0)
	} else {
		in.Dst = t.addr
		v = verdict{Decision: x.g.decideDial(x.st, in), dst: netip.AddrPortFrom(t.addr, t.port)}
	}
	rec.FQDN = t.name
	rec.Dst = v.dst
	if !v.dst.IsValid() && t.addr.IsValid() {
		rec.Dst = netip.AddrPortFrom(t.addr, t.port)
	}
	rec.Rule, rec.Reason, rec.Action = v.Rule, v.Reason, logAction(v.Action)
	if unresolved {
		rec.Enforced = true
	}
	return v, unresolved
}

// refused reports whether v keeps the client out: a deny, unless
// report-only mode waives it (never for destination safety, never without
// an address).
func (x *explicitConn) refused(v verdict, rec *accesslog.Record) bool {
	if v.Action == policy.Deny && v.Enforced(x.st.Config.Policy.Enforce, v.dst.IsValid()) {
		rec.Enforced = true
		return true
	}
	return false
}

// dial connects to the checked address, or, failing that, to the name's
// next answers (dialVerdict).
func (x *explicitConn) dial(ctx context.Context, v *verdict) (*net.TCPConn, error) {
	return dialVerdict(ctx, v, x.st.Config.Timeouts.Connect, func(ctx context.Context, dst netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
		d := upstream.Dialer{Timeout: timeout, Mark: x.st.Config.Mark}
		return d.Dial(ctx, dst)
	})
}

// dialFailure maps a failed dial to what each protocol says about it.
func dialFailure(err error) (httpStatus int, socksReply byte) {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return 504, socks5.ReplyHostUnreachable
	case errors.Is(err, syscall.ECONNREFUSED):
		return 502, socks5.ReplyConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return 502, socks5.ReplyNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH):
		return 502, socks5.ReplyHostUnreachable
	}
	return 502, socks5.ReplyGeneralFailure
}

// tunnel carries an established CONNECT or SOCKS5 tunnel to t, decided v,
// whose upstream up is connected: it peeks at the client's first bytes
// inside it (unless tunnel_sni is ignore), checks the name they carry
// against the one the client asked for, then forwards what was read and
// relays. Plain HTTP inside is served request by request
// (tunnelRequests); a client that says nothing at first is watched until
// it does (late). It returns true when the tunnel was handed to the relay
// loop, which then writes rec.
func (x *explicitConn) tunnel(ctx context.Context, t target, v verdict, up *net.TCPConn, rec *accesslog.Record) (relaying bool) {
	cfg := x.st.Config
	var data []byte
	var p peek.Result
	defer peek.Release(&p) // for the early returns; released before relaying otherwise
	rec.Protocol = peek.Unknown
	// check decides a name the client sends inside the tunnel after it
	// was decided: its late first bytes, or a ClientHello part-way
	// through (upgradeWatch).
	check := func(_ context.Context, q *peek.Result) (refused, wouldBlock bool) {
		return x.checkTunnel(t, v, q, rec), false
	}
	// watch carries the tunnel until the client's (next) first bytes are
	// decided, as late first bytes are.
	watch := func() bool {
		return x.late(ctx, up, rec, check, func(first []byte) {
			x.tunnelRequests(ctx, t, v, rec, first)
		})
	}
	if x.lc.TunnelSNI != config.TunnelIgnore {
		now := time.Now()
		// Peek reads through br: bytes the client sent right behind its
		// request are already there.
		p = peek.Peek(bufConn{x.c, x.br}, peek.Deadlines{
			FirstBytes: now.Add(cfg.Timeouts.FirstBytes),
			Complete:   now.Add(cfg.Timeouts.ClientHello),
		})
		rec.Protocol = p.Protocol
		switch {
		case p.Protocol == peek.ServerFirst && p.Err != nil:
			// Allowed, then closed before a byte: browsers preconnect
			// and drop tunnels they did not need. Nothing was refused.
			rec.Reason += "; " + peekReason(p)
			up.Close()
			x.c.Close()
			return false
		case p.Protocol == peek.ServerFirst:
			x.releaseReaderIfEmpty()
			return watch()
		case p.Protocol == peek.HTTP && p.Err == nil:
			up.Close()
			rec.Action = ""
			x.tunnelRequests(ctx, t, v, rec, p.Data)
			return false
		}
		if x.checkTunnel(t, v, &p, rec) {
			up.Close()
			x.g.refuse(x.c, p, v.Rule)
			return false
		}
		data = p.Data
	}
	if n := x.br.Buffered(); n > 0 {
		rest, _ := x.br.Peek(n)
		data = append(data, rest...)
	}
	if p.Preamble && p.Err == nil {
		// A PostgreSQL request for TLS: a ClientHello follows the
		// server's "S". Sent on, and what follows watched.
		behind := len(data) > len(p.Data) // read by the request's reader, behind it
		p.Data = data[:len(p.Data)]
		x.releaseReader()
		if !x.sendOn(up, &p, func() {}, rec) || !x.preambleAnswer(up, rec, behind) {
			return false
		}
		return watch()
	}
	hw, err := newHelloWatch(&p, data)
	if err != nil {
		up.Close()
		x.g.refuseBehindHello(x.session, &p, rec, err)
		return false
	}
	var w relay.Watch
	if hw != nil {
		w = hw
		x.onDecoy(ctx, hw, rec, check, netip.AddrPort{})
	}
	uw, first, err := x.newUpgradeWatch(ctx, &p, data, rec, check)
	if err != nil {
		up.Close()
		x.refuseUpgrade(x.c, rec, err)
		return false
	}
	if uw != nil {
		w, data = uw, first
	}
	rc, err := x.g.loops.Adopt(up)
	if err == nil {
		err = rc.Attach(x.c, data, cfg.Timeouts.Idle, func(res relay.Result) {
			x.relayed(rc, rec, res)
		})
	}
	if err != nil {
		rec.Reason += "; relay failed: " + err.Error()
		refuse.Reset(x.c)
		return false
	}
	rec.BytesUp = int64(len(data))
	peek.Release(&p)
	x.releaseReader()
	x.watch(rc, w)
	x.g.handOff(x.c, rc)
	return true
}

// checkTunnel checks the first bytes p inside a tunnel to t: the policy
// again, now that the protocol (and a TLS client's JA4) is known, so that
// a rule naming protocols or ja4 that denies holds inside tunnels as on
// other listeners; then their name against t (tunnel_sni). It notes what
// it found in rec, and reports whether the tunnel is refused.
func (x *explicitConn) checkTunnel(t target, v verdict, p *peek.Result, rec *accesslog.Record) (refused bool) {
	rec.Protocol, rec.JA4 = p.Protocol, x.g.fingerprint(p)
	if p.Protocol == peek.TLS {
		rec.ALPN = p.Hello.ALPN.Strings() // copies: the log outlives p
		if p.Hello.HasSNI {
			name, _ := fqdn.Normalize(string(p.Hello.ServerName))
			rec.ECH = x.g.realECH(x.src.Addr(), name, p)
		}
	}
	// A hello egressd cannot read, or a head still unfinished, is still
	// TLS, or HTTP: a rule naming its protocol holds for it, whatever
	// tunnel_sni then does with the malformed bytes.
	if (p.Err == nil || p.Protocol == peek.TLS || p.Protocol == peek.HTTP) && x.protocolDenied(t, v, p.Protocol, rec) {
		return true
	}
	if errors.Is(p.Err, peek.ErrHelloCoalesced) {
		// Built to carry a second hello past the decision: refused
		// whatever tunnel_sni says (a malformed hello is only logged
		// under tunnel_sni: log).
		rec.Action, rec.Enforced = accesslog.Deny, true
		rec.Reason = "inside the tunnel: " + peekReason(*p)
		return true
	}
	if p.Protocol == peek.TLS && peek.ReadsAsRequest(p.Data) {
		// Built to be served on a Host its SNI does not name, as judge
		// refuses on other listeners: whatever tunnel_sni says.
		rec.Action, rec.Enforced, rec.Rule = accesslog.Deny, true, ""
		rec.Reason = "inside the tunnel: " + helloReadsAsRequest
		return true
	}
	problem := ""
	switch {
	case p.Err != nil:
		problem = "inside the tunnel: " + peekReason(*p)
	default:
		problem = mismatch(t, *p)
	}
	if problem == "" {
		return false
	}
	if x.lc.TunnelSNI == config.TunnelMatch {
		rec.Action = accesslog.Deny
		rec.Reason = problem + " (tunnel_sni: match)"
		if x.st.Config.Policy.Enforce || p.Err != nil {
			rec.Enforced = true
			return true
		}
		return false
	}
	rec.Reason += "; " + problem + " (tunnel_sni: log)"
	return false
}

// protocolDenied decides the tunnel to t (allowed as v, without its
// protocol) again now that its protocol (and a TLS client's JA4, in rec)
// is known: a rule before the one that allowed it may deny what it
// carries. A deny is noted in rec; it refuses the tunnel unless
// report-only mode logs it and lets it through.
func (x *explicitConn) protocolDenied(t target, v verdict, protocol string, rec *accesslog.Record) (refused bool) {
	in := policy.Input{Src: x.src.Addr(), Dst: v.dst.Addr(), FQDN: t.name, Port: t.port, User: rec.User,
		Protocol: protocol, JA4: rec.JA4}
	d := x.st.Policy.Decide(in)
	if d.Action != policy.Deny {
		return false
	}
	rec.Action, rec.Rule = accesslog.Deny, d.Rule
	rec.Reason = fmt.Sprintf("inside the tunnel: %s: %s", protocol, d.Reason)
	rec.Enforced = x.st.Config.Policy.Enforce
	return rec.Enforced
}

// releaseReaderIfEmpty gives the handshake reader back when it holds no
// client bytes: a tunnel waiting for a silent client holds no 32 KiB
// buffer. (A client that is silent has sent nothing behind its request.)
func (x *explicitConn) releaseReaderIfEmpty() {
	if x.br != nil && x.br.Buffered() == 0 {
		x.releaseReader()
	}
}

// mismatch says how the name inside the tunnel (TLS SNI or HTTP Host)
// differs from the requested target, or "" when it does not. No name
// inside (SSH, a client without SNI) is no claim, and matches.
func mismatch(t target, p peek.Result) string {
	raw, what := "", ""
	switch {
	case p.Protocol == peek.TLS && p.Hello.HasSNI:
		raw, what = string(p.Hello.ServerName), "TLS server name"
	case p.Protocol == peek.HTTP && p.Host != "":
		raw, what = p.Host, "HTTP Host"
	default:
		return ""
	}
	name, addr, err := fqdn.ParseHost(raw)
	switch {
	case err != nil:
	case name != "" && name == t.name:
		return ""
	case addr.IsValid() && addr == t.addr:
		return ""
	}
	asked := t.name
	if asked == "" {
		asked = t.addr.String()
	}
	return fmt.Sprintf("%s %q inside the tunnel differs from the requested %s", what, raw, asked)
}

// bufConn reads through the handshake's bufio.Reader, so that peek sees
// the bytes already buffered, and sets deadlines on the connection.
type bufConn struct {
	*net.TCPConn
	br *bufio.Reader
}

func (b bufConn) Read(p []byte) (int, error) { return b.br.Read(p) }

// closedEarly reports whether err is the client's own clean close (an EOF,
// at a message boundary or inside one), not a reset or a timeout. Such a
// client that has named no destination is logged with action none:
// browsers open proxy connections ahead of need and drop the ones they did
// not use, and counting them as denies would drown the real ones.
func closedEarly(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// handshakeError words a failed handshake read for the log.
func handshakeError(err error, silent string) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "handshake timeout (client_hello)"
	case errors.Is(err, io.EOF):
		return silent + ": client closed"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "client closed mid-handshake"
	case errors.Is(err, syscall.ECONNRESET):
		return "client reset the connection during the handshake"
	}
	return err.Error()
}
