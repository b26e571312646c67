package gateway

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/fqdn"
	"github.com/egressd/egressd/internal/httpconnect"
	"github.com/egressd/egressd/internal/peek"
	"github.com/egressd/egressd/internal/refuse"
)

// On a connection that carries plain HTTP, every request is decided, not
// only the first: a kept-alive connection's second request may name
// another Host, and a server behind a shared address (a CDN, a virtual
// host) would serve it. So egressd serves such a connection as its
// explicit listener serves a proxy client: it reads each request head,
// decides it by its own Host, forwards it on an upstream connection of its
// own (Connection: close, hop-by-hop headers removed), copies the response
// back, and logs a line per request. A request the policy denies gets a
// 403 naming the rule, and the connection ends.

// serveRequests serves the plain HTTP requests of a transparent or sni
// listener's client. first holds the bytes peek read (the first request
// head, at least); orig is the original destination (transparent). Each
// request is decided as an early first request would have been: its Host
// (or, with none, the name this client resolved to orig through egressd's
// DNS) and the listener's sni_destination. Every line is logged here.
func (s *session) serveRequests(ctx context.Context, first []byte, orig netip.AddrPort) {
	g, c := s.g, s.c
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(io.MultiReader(bytes.NewReader(first), c))
	x := &explicitConn{session: s, br: br}
	defer x.releaseReader()
	c.SetReadDeadline(time.Now().Add(s.st.Config.Timeouts.ClientHello))
	// s.st and s.lc: requestLoop keeps them the running config's.
	x.requestLoop(ctx, func(head []byte) (httpconnect.Request, error) {
		port := orig.Port()
		if s.lc.Mode == config.ModeSNI {
			port = s.lc.UpstreamPort
		}
		return httpconnect.ParseOrigin(head, port)
	},
		func(ctx context.Context, q httpconnect.Request, _ []byte, rec *accesslog.Record) (keep, relaying bool) {
			defer g.logConn(rec)
			rec.Dst = orig
			p := peek.Result{Protocol: peek.HTTP, Host: hostOf(q)}
			v := g.judge(ctx, s.st, s.lc, rec, &p, orig)
			if g.refusing(s.st, v, rec) {
				refuse.HTTPForbidden(c, v.Rule)
				return false, false
			}
			return x.send(ctx, v, q, rec), false
		})
}

// tunnelRequests serves the plain HTTP requests inside an established
// CONNECT or SOCKS5 tunnel to t, decided v: each request's Host must name
// t (tunnel_sni: match refuses one that does not with a 403; log notes
// it), and each is sent to v's checked address on a connection of its own.
// first holds the bytes peek read inside the tunnel; base is the tunnel's
// record (user, name source).
func (x *explicitConn) tunnelRequests(ctx context.Context, t target, v verdict, base *accesslog.Record, first []byte) {
	// The handshake reader may still hold client bytes behind first: it
	// is read after them (and left to the collector, not the pool).
	var rest io.Reader = x.c
	if x.br != nil && x.br.Buffered() > 0 {
		rest = x.br
	} else {
		x.releaseReader()
	}
	x.br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(first), rest), httpconnect.DefaultLimits.Head)
	x.pinned = true // decided once, as the tunnel: a reload ends the connection between requests
	x.c.SetReadDeadline(time.Now().Add(x.st.Config.Timeouts.ClientHello))
	x.requestLoop(ctx, func(head []byte) (httpconnect.Request, error) { return httpconnect.ParseOrigin(head, t.port) },
		func(ctx context.Context, q httpconnect.Request, _ []byte, rec *accesslog.Record) (keep, relaying bool) {
			defer x.g.logConn(rec)
			rec.User, rec.FQDN, rec.FQDNSource, rec.Dst = base.User, base.FQDN, base.FQDNSource, v.dst
			rec.Rule, rec.Action, rec.Reason, rec.Enforced = v.Rule, logAction(v.Action), v.Reason, base.Enforced
			rec.Protocol = peek.HTTP
			if x.protocolDenied(t, v, peek.HTTP, rec) {
				refuse.HTTPForbidden(x.c, rec.Rule)
				return false, false
			}
			if problem := mismatch(t, peek.Result{Protocol: peek.HTTP, Host: hostOf(q)}); problem != "" {
				if x.lc.TunnelSNI != config.TunnelMatch {
					rec.Reason += "; " + problem + " (tunnel_sni: log)"
				} else {
					// As for the tunnel's first bytes: a deny, which
					// report-only mode logs and lets through.
					rec.Action, rec.Enforced = accesslog.Deny, x.st.Config.Policy.Enforce
					rec.Reason = problem + " (tunnel_sni: match)"
					if rec.Enforced {
						refuse.HTTPForbidden(x.c, v.Rule)
						return false, false
					}
				}
			}
			return x.send(ctx, v, q, rec), false
		})
}

// hostOf is the host of q's authority, without the port ParseOrigin
// added; "" when the request named none.
func hostOf(q httpconnect.Request) string {
	if i := strings.LastIndexByte(q.Authority, ':'); i > 0 {
		return q.Authority[:i]
	}
	return q.Authority
}

// sameTarget reports whether host, the target net/http read from a request
// head (req.Host), is the one egressd's own parser decided on (q).
func sameTarget(host string, q httpconnect.Request) bool {
	if host == "" {
		return q.Authority == ""
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	} else {
		host = strings.Trim(host, "[]")
	}
	name, addr, err := fqdn.ParseHost(host)
	return err == nil && name == q.Name && addr == q.Addr
}
