package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/egressd/egressd/internal/peek"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/httpconnect"
	"github.com/egressd/egressd/internal/refuse"
)

// serveHTTP serves an HTTP proxy client: CONNECT opens a tunnel (the rest
// of the connection); an absolute-URI request is decided, forwarded and
// answered, and the next request on the kept-alive connection is decided
// afresh. One access-log line per CONNECT and per forwarded request.
func (x *explicitConn) serveHTTP(ctx context.Context) (relaying bool) {
	var auth authCache
	return x.requestLoop(ctx, httpconnect.Parse, func(ctx context.Context, q httpconnect.Request, head []byte, rec *accesslog.Record) (keep, relaying bool) {
		if auth.st != x.st {
			auth = authCache{st: x.st} // a reload may have removed the user
		}
		if len(x.st.Config.Users) > 0 {
			user, why := auth.check(q.ProxyAuthorization, x.authenticate)
			if why != "" {
				rec.Action, rec.Reason, rec.Enforced = accesslog.Deny, "http proxy: "+why, true
				if rec.FQDN = q.Name; q.Name != "" {
					rec.FQDNSource = accesslog.FromHost
					if q.Connect {
						rec.FQDNSource = accesslog.FromConnect
					}
				}
				refuse.Answer(x.c, httpconnect.ProxyAuthRequired())
				x.g.logConn(rec)
				return false, false
			}
			rec.User = user
		}
		t := target{name: q.Name, addr: q.Addr, port: q.Port}
		if q.Connect {
			x.br.Discard(len(head))
			return false, x.connect(ctx, t, *rec)
		}
		keep = x.forward(ctx, t, q, rec)
		x.g.logConn(rec)
		return keep, false
	})
}

// requestLoop reads the request heads of a kept-alive HTTP connection one
// after another, parses each with parse and hands it to serve, which
// decides, answers and logs it. A head that cannot be read or parsed is
// answered (400, 408, 414, 431) and logged here. Between requests the
// connection may idle for timeouts.idle; a started head must be whole
// within client_hello. It returns true when serve handed the connection to
// the relay loop.
func (x *explicitConn) requestLoop(ctx context.Context, parse func([]byte) (httpconnect.Request, error),
	serve func(ctx context.Context, q httpconnect.Request, head []byte, rec *accesslog.Record) (keep, relaying bool)) (relaying bool) {
	lim := httpconnect.DefaultLimits
	for n := 0; ; n++ {
		if n > 0 {
			// Each request is decided under the config that runs when it
			// comes: a reload since the last one holds for this one.
			// Requests whose decision was made once for all of them (a
			// tunnel's) end with the connection instead.
			if st := x.g.state.Load(); st != x.st {
				if x.pinned {
					x.c.Close()
					return false
				}
				x.st = st
				if x.bl != nil {
					x.lc = x.bl.config()
				}
			}
		}
		rec := x.record()
		rec.Protocol = "http"
		head, err := httpconnect.ReadHead(x.br, lim)
		x.handshakeDone()
		if err != nil {
			if n > 0 && x.br.Buffered() == 0 && (errors.Is(err, io.EOF) || peek.TimedOut(err)) {
				// A kept-alive connection that ends (or idles out)
				// between requests: nothing to log.
				x.c.Close()
				return false
			}
			x.httpFail(&rec, err)
			return false
		}
		q, err := parse(head)
		if err != nil {
			rec.Action, rec.Reason, rec.Enforced = accesslog.Deny, "http: "+err.Error(), true
			refuse.Answer(x.c, httpconnect.Response(httpconnect.StatusFor(err), "egressd: "+err.Error()+"\n"))
			x.g.logConn(&rec)
			return false
		}
		keep, relaying := serve(ctx, q, head, &rec)
		if relaying || !keep {
			return relaying
		}
		// The next request: wait up to idle for it to start, then
		// client_hello for it to be complete.
		x.c.SetReadDeadline(time.Now().Add(x.st.Config.Timeouts.Idle))
		if _, err := x.br.Peek(1); err != nil {
			x.c.Close()
			return false
		}
		x.c.SetReadDeadline(time.Now().Add(x.st.Config.Timeouts.ClientHello))
	}
}

// httpFail answers a request head that could not be read.
func (x *explicitConn) httpFail(rec *accesslog.Record, err error) {
	rec.Action, rec.Enforced = accesslog.Deny, true
	defer x.g.logConn(rec)
	switch {
	case errors.Is(err, httpconnect.ErrRequestLineTooLong), errors.Is(err, httpconnect.ErrHeadTooLarge):
		rec.Reason = "http proxy: " + err.Error()
		refuse.Answer(x.c, httpconnect.Response(httpconnect.StatusFor(err), "egressd: "+err.Error()+"\n"))
	case peek.TimedOut(err):
		rec.Reason = "http proxy: handshake timeout (client_hello): request head incomplete"
		refuse.Answer(x.c, httpconnect.Response(http.StatusRequestTimeout, "egressd: request head incomplete\n"))
	default:
		rec.Reason = "http proxy: " + handshakeError(err, "no request")
		if closedEarly(err) {
			rec.Action = accesslog.None
		}
		refuse.Reset(x.c)
	}
}

// connect serves CONNECT: 403 for a deny, 502/504 when the server cannot
// be reached, else 200 and the tunnel.
func (x *explicitConn) connect(ctx context.Context, t target, rec accesslog.Record) (relaying bool) {
	defer func() {
		if !relaying {
			x.g.logConn(&rec)
		}
	}()
	if t.name != "" {
		rec.FQDNSource = accesslog.FromConnect
	}
	v, unresolved := x.decide(ctx, t, rec.User, &rec)
	switch {
	case unresolved:
		refuse.Answer(x.c, httpconnect.Response(http.StatusBadGateway, "egressd: cannot resolve "+t.name+"\n"))
		return
	case x.refused(v, &rec):
		refuse.HTTPForbidden(x.c, v.Rule)
		return
	}
	up, err := x.dial(ctx, &v)
	rec.Dst, rec.Reason = v.dst, v.Reason
	if err != nil {
		rec.Reason = v.Reason + "; upstream failed: " + err.Error()
		code, _ := dialFailure(err)
		refuse.Answer(x.c, httpconnect.Response(code, "egressd: "+v.dst.String()+" unreachable\n"))
		return
	}
	if _, err := x.c.Write(httpconnect.Established); err != nil {
		rec.Reason = v.Reason + "; client write failed: " + err.Error()
		up.Close()
		x.c.Close()
		return
	}
	return x.tunnel(ctx, t, v, up, &rec)
}

// forward decides one absolute-URI request and, if allowed, sends it on
// (send). It reports whether the client connection stays open for another
// request.
func (x *explicitConn) forward(ctx context.Context, t target, q httpconnect.Request, rec *accesslog.Record) bool {
	if t.name != "" {
		rec.FQDNSource = accesslog.FromHost
	}
	v, unresolved := x.decide(ctx, t, rec.User, rec)
	switch {
	case unresolved:
		refuse.Answer(x.c, httpconnect.Response(http.StatusBadGateway, "egressd: cannot resolve "+t.name+"\n"))
		return false
	case x.refused(v, rec):
		refuse.HTTPForbidden(x.c, v.Rule)
		return false
	}
	return x.send(ctx, v, q, rec)
}

// send forwards one decided request (q, whose head is next in x.br) to
// v's address on a connection of its own, and copies the response back.
// It reports whether the client connection stays open for another request.
func (x *explicitConn) send(ctx context.Context, v verdict, q httpconnect.Request, rec *accesslog.Record) bool {
	cfg := x.st.Config
	req, err := http.ReadRequest(x.br)
	if err != nil {
		rec.Reason = v.Reason + "; malformed request: " + err.Error()
		refuse.Answer(x.c, httpconnect.Response(http.StatusBadRequest, "egressd: malformed request\n"))
		return false
	}
	if !sameTarget(req.Host, q) {
		// Two parsers read one head: egressd decided on one target, and
		// must never send the server another.
		rec.Action, rec.Enforced = accesslog.Deny, true
		rec.Reason = fmt.Sprintf("%s; request target %q read two ways (decided on %q)", v.Reason, req.Host, q.Authority)
		refuse.Answer(x.c, httpconnect.Response(http.StatusBadRequest, "egressd: ambiguous request target\n"))
		return false
	}
	// The body, if any, streams from the client: idle with no byte read
	// ends it, however long the whole upload takes.
	x.c.SetReadDeadline(time.Now().Add(cfg.Timeouts.Idle))
	if req.Body != http.NoBody {
		req.Body = idleBody{req.Body, x.c, cfg.Timeouts.Idle}
	}
	clientClose := req.Close
	httpconnect.RemoveHopByHop(req.Header)
	if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		// The decision is made: tell the client to send its body now
		// rather than after its own wait for a 100 (curl waits 1 s).
		req.Header.Del("Expect")
		if _, err := x.c.Write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
			rec.Reason = v.Reason + "; client write failed: " + err.Error()
			x.c.Close()
			return false
		}
	}
	req.Close = true // one upstream connection per request: each is decided alone
	req.RequestURI = ""
	if _, ok := req.Header["User-Agent"]; !ok {
		// Request.Write would invent "Go-http-client/1.1"; an empty
		// value makes it write none, as the client sent none.
		req.Header["User-Agent"] = []string{""}
	}

	up, err := x.dial(ctx, &v)
	rec.Dst, rec.Reason = v.dst, v.Reason
	if err != nil {
		rec.Reason = v.Reason + "; upstream failed: " + err.Error()
		code, _ := dialFailure(err)
		refuse.Answer(x.c, httpconnect.Response(code, "egressd: "+v.dst.String()+" unreachable\n"))
		return false
	}
	defer up.Close()
	// The upstream socket is tracked with the clients, so that the end of
	// a drain (grace over, or a second signal) closes it too: closing only
	// the client would not wake a wait for the server's answer.
	x.g.track(up, true)
	defer x.g.track(up, false)
	upI := idleConn{up, cfg.Timeouts.Idle}
	upW := &countWriter{w: upI}
	if err := req.Write(upW); err != nil {
		rec.BytesUp = upW.n
		rec.Reason = v.Reason + "; forwarding the request failed: " + err.Error()
		refuse.Answer(x.c, httpconnect.Response(http.StatusBadGateway, "egressd: forwarding the request failed\n"))
		return false
	}
	rec.BytesUp = upW.n
	cw := &countWriter{w: idleConn{x.c, cfg.Timeouts.Idle}}
	upR := bufio.NewReader(&aheadReader{r: upI, written: &cw.n, window: maxResponseAhead})
	resp, err := http.ReadResponse(upR, req)
	for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
		resp, err = http.ReadResponse(upR, req) // the body was sent already: drop interim answers
	}
	if err != nil {
		rec.Reason = v.Reason + "; reading the response failed: " + err.Error()
		code := http.StatusBadGateway
		if peek.TimedOut(err) {
			code = http.StatusGatewayTimeout
		}
		refuse.Answer(x.c, httpconnect.Response(code, "egressd: no valid response from the server\n"))
		return false
	}
	defer resp.Body.Close()
	httpconnect.RemoveHopByHop(resp.Header)
	// Without a length or chunking, the body ends when the connection
	// does: the client can only learn its end from our close.
	unframed := resp.ContentLength < 0 && !slices.Contains(resp.TransferEncoding, "chunked")
	resp.Close = clientClose || unframed || resp.StatusCode == http.StatusSwitchingProtocols
	err = resp.Write(cw)
	x.c.SetWriteDeadline(time.Time{})
	rec.BytesDown = cw.n
	rec.Reason = v.Reason + fmt.Sprintf("; %s -> %d", req.Method, resp.StatusCode)
	if err != nil {
		rec.Reason += "; copying the response failed: " + err.Error()
		refuse.Reset(x.c)
		return false
	}
	if resp.Close {
		x.c.CloseWrite()
		x.c.Close()
		return false
	}
	return true
}

// authCache remembers the last Proxy-Authorization value that was
// accepted on a connection: clients send it with every request, and bcrypt
// is meant to be slow.
type authCache struct {
	value, user string
	st          *State // the config value was accepted under
}

// check returns the user the credential authenticates, or why not;
// authenticate checks a user's password (explicitConn.authenticate).
func (a *authCache) check(value string, authenticate func(user, pass string) (why string)) (user, why string) {
	if value == "" {
		return "", "proxy authentication required"
	}
	if a.value != "" && value == a.value {
		return a.user, ""
	}
	u, p, ok := httpconnect.BasicCredentials(value)
	if !ok {
		return "", "proxy authentication: want Basic credentials"
	}
	if why := authenticate(u, p); why != "" {
		return "", "proxy " + why
	}
	a.value, a.user = value, u
	return u, ""
}

// maxResponseAhead bounds how far the reading of a forwarded response may
// run ahead of what has been written to the client: the whole response
// head, interim (1xx) responses, a chunk-size line, trailers. net/http
// reads a header block whole into memory however long it is, so a server
// that never ends its head would otherwise grow egressd without bound.
const maxResponseAhead = 64 << 10

// errResponseAhead is the error of a response read past maxResponseAhead.
var errResponseAhead = errors.New("response head, interim responses or trailers larger than 64 KiB")

// aheadReader reads a response for a client, at most window bytes ahead of
// what has been written to the client (*written).
type aheadReader struct {
	r       io.Reader
	read    int64
	written *int64
	window  int64
}

func (a *aheadReader) Read(p []byte) (int, error) {
	room := *a.written + a.window - a.read
	if room <= 0 {
		return 0, errResponseAhead
	}
	if int64(len(p)) > room {
		p = p[:room]
	}
	n, err := a.r.Read(p)
	a.read += int64(n)
	return n, err
}

// countWriter counts what it writes; it is only used where bytes are
// copied in user space anyway (plain HTTP forwarding).
// idleConn pushes a deadline out by idle before every read and every
// write, so that a forwarded response that keeps moving is never cut:
// idle bounds the time with no byte moved, not the whole exchange.
type idleConn struct {
	c    net.Conn
	idle time.Duration
}

func (c idleConn) Read(p []byte) (int, error) {
	c.c.SetReadDeadline(time.Now().Add(c.idle))
	return c.c.Read(p)
}

func (c idleConn) Write(p []byte) (int, error) {
	c.c.SetWriteDeadline(time.Now().Add(c.idle))
	return c.c.Write(p)
}

// idleBody pushes the client's read deadline out by idle before each read
// of a forwarded request's body, which http.ReadRequest reads through the
// connection's buffer rather than through an idleConn.
type idleBody struct {
	io.ReadCloser
	c    net.Conn
	idle time.Duration
}

func (b idleBody) Read(p []byte) (int, error) {
	b.c.SetReadDeadline(time.Now().Add(b.idle))
	return b.ReadCloser.Read(p)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
