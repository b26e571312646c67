package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/peek"
	"github.com/egressd/egressd/internal/quicproxy"
)

// A transparent listener with udp: true also serves QUIC: its UDP socket,
// on the same address, belongs to a quicproxy.Server, which holds each
// flow until its ClientHello is read and asks decideQUIC, the TCP path's
// own decision, before a datagram leaves. Flows count against the same
// limits as connections, but separately.

// udpListener is the UDP side of one listener.
type udpListener struct {
	cfg config.Listener // as bound; the running config's, by name, wins
	srv *quicproxy.Server
}

// maxFlowIdle caps a QUIC flow's idle timeout (timeouts.idle): UDP has no
// close that egressd can see, and QUIC clients keep a flow alive through
// NATs, which forget UDP flows after 2 minutes or less (Linux conntrack:
// 120 s), with packets of their own.
const maxFlowIdle = 2 * time.Minute

// bindUDP binds the UDP side of lc.
func (g *Gateway) bindUDP(ctx context.Context, lc config.Listener) error {
	conn, err := listener.ListenUDP(ctx, lc.Address, listener.Options{TProxy: lc.TProxy})
	if err != nil {
		return fmt.Errorf("listener %s (udp): %w", lc.Name, err)
	}
	u := &udpListener{cfg: lc}
	u.srv = quicproxy.New(quicproxy.Config{
		Conn:   conn,
		Log:    g.log,
		Params: func() quicproxy.Params { return g.quicParams(u) },
		Decide: func(ctx context.Context, rec *accesslog.Record, h *quicproxy.Hello) quicproxy.Verdict {
			return g.decideQUIC(ctx, u, rec, h)
		},
		Logged: g.logConn,
		Admit:  g.admitFlow,
	})
	g.mu.Lock()
	g.udp = append(g.udp, u)
	g.mu.Unlock()
	g.log.Info("serving QUIC on udp", "listener", lc.Name, "address", u.srv.Addr().String(), "quic_deny", lc.QUICDeny)
	return nil
}

// config is the listener's entry in st's config, or the one it was bound
// with if a reload removed it (its flows still run).
func (u *udpListener) config(st *State) *config.Listener {
	for i := range st.Config.Listeners {
		if lc := &st.Config.Listeners[i]; lc.Name == u.cfg.Name && lc.UDP {
			return lc
		}
	}
	return &u.cfg
}

// quicParams are the settings of a new flow, from the running config.
func (g *Gateway) quicParams(u *udpListener) quicproxy.Params {
	st := g.state.Load()
	cfg, lc := st.Config, u.config(st)
	return quicproxy.Params{
		Listener:     lc.Name,
		HelloTimeout: cfg.Timeouts.ClientHello,
		Idle:         min(cfg.Timeouts.Idle, maxFlowIdle),
		Mark:         cfg.Mark,
		Transparent:  u.cfg.TProxy,
		Drop:         lc.QUICDeny == config.QUICDrop,
		Enforce:      cfg.Policy.Enforce,
		// Flows and TCP connections share max_connections and its
		// per-source share (admitFlow), not a budget each.
		MaxPending: cfg.Limits.MaxPendingHandshakes,
	}
}

// decideQUIC decides a QUIC flow as a TLS connection with the same
// ClientHello to the same original destination is decided (judge's steps,
// with protocol quic, which rules may name): the name from the SNI (or,
// with none, the name this client resolved to the destination through
// egressd's DNS), decideName for the listener's sni_destination and
// destination safety; refusing applies report-only mode.
func (g *Gateway) decideQUIC(ctx context.Context, u *udpListener, rec *accesslog.Record, h *quicproxy.Hello) quicproxy.Verdict {
	st := g.state.Load()
	// The flow's hello is decided as a TLS connection's first bytes are,
	// by judge: the same name, ECH, name memory and policy steps.
	p := peek.Result{Protocol: accesslog.ProtocolQUIC, Hello: *h.Info, HelloOK: true}
	v := g.judge(ctx, st, u.config(st), rec, &p, h.Orig)
	if g.refusing(st, v, rec) {
		return quicproxy.Verdict{Unreachable: v.unreachable}
	}
	return quicproxy.Verdict{Allow: true, Dst: v.dst}
}

// serveUDP starts the UDP sides, with g.mu held; Serve waits for them,
// and a drain's end closes their flows with the connections.
func (g *Gateway) serveUDP() {
	for _, u := range g.udp {
		g.wg.Add(1)
		g.conns[u.srv] = struct{}{}
		go func() {
			defer g.wg.Done()
			u.srv.Serve()
		}()
	}
}

// stopUDP stops the UDP sides receiving, with g.mu held: no new flow
// starts.
func (g *Gateway) stopUDP() {
	for _, u := range g.udp {
		u.srv.Stop()
	}
}

// UDPAddrs returns the bound address of each listener's UDP side, by
// name; tests that bind port 0 learn their ports here.
func (g *Gateway) UDPAddrs() map[string]netip.AddrPort {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := make(map[string]netip.AddrPort, len(g.udp))
	for _, u := range g.udp {
		m[u.cfg.Name] = u.srv.Addr()
	}
	return m
}

// udpRestart lists what a reload cannot change on the UDP sides: they
// are bound at start.
func (g *Gateway) udpRestart(cfg *config.Config) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	bound := make(map[string]netip.AddrPort, len(g.udp))
	for _, u := range g.udp {
		bound[u.cfg.Name] = u.cfg.Address
	}
	var r []string
	for _, lc := range cfg.Listeners {
		if addr, ok := bound[lc.Name]; lc.UDP != ok || ok && addr != lc.Address {
			r = append(r, fmt.Sprintf("listener %s: udp or its address changed; the UDP side stays as it was until a restart", lc.Name))
		}
		delete(bound, lc.Name)
	}
	for name := range bound {
		r = append(r, fmt.Sprintf("listener %s: removed; its UDP side serves until a restart", name))
	}
	return r
}

// udpCounts is the UDP sides' Stats, summed, as the metrics expose them.
func (g *Gateway) udpCounts() metrics.UDPCounts {
	g.mu.Lock()
	udp := append([]*udpListener(nil), g.udp...)
	g.mu.Unlock()
	c := metrics.UDPCounts{Dropped: make(map[string]uint64, len(quicproxy.DropReasons))}
	for _, r := range quicproxy.DropReasons {
		c.Dropped[r] = 0
	}
	for _, u := range udp {
		s := u.srv.Stats()
		c.Flows += s.Flows
		c.Pending += s.Pending
		c.Closes += s.Closes
		for r, n := range s.Dropped {
			c.Dropped[r] += n
		}
	}
	return c
}

// hasUDP reports whether any listener of cfg has a UDP side.
func hasUDP(cfg *config.Config) bool {
	for _, lc := range cfg.Listeners {
		if lc.UDP {
			return true
		}
	}
	return false
}

// admitFlow counts a QUIC flow from src against max_connections and
// max_connections_per_source, which TCP connections count against too: a
// relayed flow holds two sockets, as a connection does, and the limits
// are derived from the open-files limit at two a connection. With a
// budget each, one source's flows and connections together could take
// twice what the process has.
func (g *Gateway) admitFlow(src netip.Addr) (release func(), ok bool) {
	lim := &g.state.Load().Config.Limits
	n := g.flows.Add(1)
	if lim.MaxConnections > 0 && n+g.active.Load() > int64(lim.MaxConnections) {
		g.flows.Add(-1)
		return nil, false
	}
	max := lim.MaxConnectionsPerSource
	if max > 0 && !g.sources.Acquire(src, max) {
		g.flows.Add(-1)
		return nil, false
	}
	return func() {
		if max > 0 {
			g.sources.Release(src)
		}
		g.flows.Add(-1)
	}, true
}
