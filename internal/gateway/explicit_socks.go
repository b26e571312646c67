package gateway

import (
	"context"
	"errors"
	"fmt"
	"github.com/egressd/egressd/internal/accesslog"
	"net/netip"
	"slices"

	"github.com/egressd/egressd/internal/fqdn"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/refuse"
	"github.com/egressd/egressd/internal/socks5"
)

// serveSOCKS runs one SOCKS5 exchange: method, credentials when users are
// configured, the request, then the tunnel. Every way it ends is logged.
func (x *explicitConn) serveSOCKS(ctx context.Context) (relaying bool) {
	rec := x.record()
	rec.Protocol = "socks5"
	defer func() {
		if !relaying {
			x.g.logConn(&rec)
		}
	}()
	var err error // the handshake read's error, for fail
	fail := func(reason string, reply []byte) {
		rec.Action, rec.Reason, rec.Enforced = accesslog.Deny, "socks5: "+reason, true
		if closedEarly(err) {
			rec.Action = accesslog.None
		}
		if reply == nil {
			refuse.Reset(x.c)
			return
		}
		refuse.Answer(x.c, reply)
	}

	var methods []byte
	methods, err = socks5.ReadGreeting(x.br)
	if err != nil {
		fail("greeting: "+handshakeError(err, "no greeting"), nil)
		return
	}
	want := socks5.MethodNoAuth
	if len(x.st.Config.Users) > 0 {
		want = socks5.MethodUserPass
	}
	if !slices.Contains(methods, want) {
		fail(fmt.Sprintf("no acceptable method: client offers %x, egressd requires %s", methods, methodName(want)),
			[]byte{socks5.Version, socks5.MethodNoAcceptable})
		return
	}
	socks5.WriteMethod(x.c, want)
	if want == socks5.MethodUserPass {
		var user, pass string
		user, pass, err = socks5.ReadUserPass(x.br)
		if err != nil {
			fail("authentication: "+handshakeError(err, "no credentials"), nil)
			return
		}
		if why := x.authenticate(user, pass); why != "" {
			fail(why, []byte{1, 1})
			return
		}
		socks5.WriteAuthStatus(x.c, true)
		rec.User = user
	}

	var q socks5.Request
	q, err = socks5.ReadRequest(x.br)
	x.handshakeDone()
	switch {
	case errors.Is(err, socks5.ErrAddrType):
		fail("request: "+err.Error(), reply(socks5.ReplyAddressNotSupported))
		return
	case errors.Is(err, socks5.ErrVersion), errors.Is(err, socks5.ErrReserved),
		errors.Is(err, socks5.ErrEmptyDomain), errors.Is(err, socks5.ErrZeroPort):
		fail("request: "+err.Error(), reply(socks5.ReplyGeneralFailure))
		return
	case err != nil:
		fail("request: "+handshakeError(err, "no request"), nil)
		return
	}
	if q.Cmd != socks5.CmdConnect {
		fail(fmt.Sprintf("command %s not supported (only CONNECT)", cmdName(q.Cmd)), reply(socks5.ReplyCommandNotSupported))
		return
	}
	t := target{port: q.Port, addr: q.Addr.Unmap()}
	if q.Domain != "" {
		if t.name, t.addr, err = fqdn.ParseHost(q.Domain); err != nil {
			fail(fmt.Sprintf("host %q: %v", q.Domain, err), reply(socks5.ReplyNotAllowed))
			return
		}
		if t.name != "" {
			rec.FQDNSource = accesslog.FromSOCKS
		}
	}

	v, unresolved := x.decide(ctx, t, rec.User, &rec)
	switch {
	case unresolved:
		refuse.Answer(x.c, reply(socks5.ReplyHostUnreachable))
		return
	case x.refused(v, &rec):
		refuse.Answer(x.c, reply(socks5.ReplyNotAllowed))
		return
	}
	up, err := x.dial(ctx, &v)
	rec.Dst, rec.Reason = v.dst, v.Reason
	if err != nil {
		rec.Reason = v.Reason + "; upstream failed: " + err.Error()
		_, code := dialFailure(err)
		refuse.Answer(x.c, reply(code))
		return
	}
	var ok [22]byte
	b := ok[:0]
	if err := socks5.WriteReply(sliceWriter{&b}, socks5.ReplySucceeded, listener.AddrPort(up.LocalAddr())); err == nil {
		if _, err := x.c.Write(b); err != nil {
			rec.Reason = v.Reason + "; client write failed: " + err.Error()
			up.Close()
			x.c.Close()
			return
		}
	}
	return x.tunnel(ctx, t, v, up, &rec)
}

func reply(code byte) []byte {
	var b []byte
	socks5.WriteReply(sliceWriter{&b}, code, netip.AddrPort{})
	return b
}

// sliceWriter appends to a byte slice.
type sliceWriter struct{ b *[]byte }

func (w sliceWriter) Write(p []byte) (int, error) { *w.b = append(*w.b, p...); return len(p), nil }

func methodName(m byte) string {
	if m == socks5.MethodUserPass {
		return "username/password (02)"
	}
	return "no authentication (00)"
}

func cmdName(c byte) string {
	switch c {
	case socks5.CmdBind:
		return "BIND"
	case socks5.CmdUDPAssociate:
		return "UDP ASSOCIATE"
	}
	return fmt.Sprintf("0x%02x", c)
}
