package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/limit"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/refuse"
)

// This file is what an operator drives: limits, readiness, metrics, drain
// and live reload.

// Metrics returns the gateway's metrics, for the admin endpoint.
func (g *Gateway) Metrics() *metrics.Metrics { return g.metrics }

// State returns the state new connections decide with.
func (g *Gateway) State() *State { return g.state.Load() }

// Ready reports whether the gateway should receive traffic: its listeners
// are bound, a policy is loaded (always, once New has run) and it is not
// draining. why says what is missing.
func (g *Gateway) Ready() (ok bool, why string) {
	switch {
	case g.draining.Load():
		return false, "draining"
	case !g.bound.Load():
		return false, "listeners not bound"
	}
	return true, "ready"
}

// Abort ends a drain at once: Serve closes the live connections without
// waiting for the rest of the grace period.
func (g *Gateway) Abort() { g.abortOne.Do(func() { close(g.abort) }) }

// admit counts a just-accepted connection against max_connections and
// max_pending_handshakes, or resets it at once when either is reached. It
// runs in the accept loop, so it costs two atomic adds and, on the refuse
// path only, a reset and a counter.
func (g *Gateway) admit(c *net.TCPConn, proxied bool) (pendingSrc, ok bool) {
	peer := listener.AddrPort(c.RemoteAddr())
	pendingSrc, limit, max, ok := g.count(peer.Addr(), proxied)
	if !ok {
		g.reject(peer, limit, max, func() { refuse.Reset(c) })
	}
	return pendingSrc, ok
}

// count takes a new connection's place among the active connections and
// the pending handshakes; ok is false, and nothing taken, when the limit
// named what (of value max) is reached. A peer address may hold three quarters of the
// pending places (limit.SourceShare), so that a flood of silent or
// trickling clients from one address cannot turn everyone else away;
// pendingSrc says that count took one of those, which the session gives
// back with its pending time. A listener behind a balancer (proxied:
// PROXY protocol) has the balancer as its peer, for every client: its
// connections take none.
func (g *Gateway) count(peer netip.Addr, proxied bool) (pendingSrc bool, what string, max int, ok bool) {
	lim := &g.state.Load().Config.Limits
	n := g.active.Add(1)
	if lim.MaxConnections > 0 && n+g.flows.Load() > int64(lim.MaxConnections) { // QUIC flows share it (admitFlow)
		g.active.Add(-1)
		return false, metrics.LimitConnections, lim.MaxConnections, false
	}
	p := g.pending.Add(1)
	if lim.MaxPendingHandshakes > 0 && p > int64(lim.MaxPendingHandshakes) {
		g.pending.Add(-1)
		g.active.Add(-1)
		return false, metrics.LimitPendingHandshakes, lim.MaxPendingHandshakes, false
	}
	if max := limit.SourceShare(lim.MaxPendingHandshakes); max > 0 && !proxied {
		if !g.pendingSources.Acquire(peer, max) {
			g.pending.Add(-1)
			g.active.Add(-1)
			return false, metrics.LimitPendingPerSource, max, false
		}
		return true, "", 0, true
	}
	return false, "", 0, true
}

// reject resets (with reset) a connection from src over a limit. Such a
// connection gets no access-log line (under a flood that would add to the
// overload); the metric counts each one and a warning is logged at most
// once a second.
func (g *Gateway) reject(src netip.AddrPort, limit string, max int, reset func()) {
	g.metrics.Rejected(limit) // counted before the client can see the reset
	reset()
	if g.limitLog.Allow(time.Now()) {
		g.log.Warn("limit reached: resetting new connections", "limit", limit, "max", max, "example_src", src.String())
	}
}

// logConn writes a connection's access-log line and counts it. A record
// without an action was handed over to a request loop, whose lines (one
// per request) stand for it.
func (g *Gateway) logConn(rec *accesslog.Record) {
	if rec.Action == "" {
		return
	}
	g.access.Log(rec)
	g.metrics.Conn(rec)
	g.recent.Add(rec)
}

// Reload makes st the state of every new connection; connections already
// running keep the state they started with. Listener changes are applied
// first, so that a failure leaves everything as it was:
//
//   - a listener whose address (and tproxy setting) is unchanged keeps its
//     socket and takes the new name, mode and options (a mode change turns
//     deferred accepts on or off on that socket);
//   - a new address is bound before any old socket is closed;
//   - a listener that is gone stops accepting (its connections continue);
//   - busy_poll applies from each relay loop's next wait.
//
// What cannot be changed safely while running is kept as it was and listed
// in restart: tproxy on an address that stays (rebinding it would drop
// connections the kernel queued), the resolver, the log format and output,
// the admin endpoint, and the mark of sockets other than TCP dials. An
// error (a new address that cannot be bound) means nothing changed.
func (g *Gateway) Reload(st *State) (restart []string, err error) {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	if g.draining.Load() {
		return nil, errors.New("draining: reload refused")
	}
	cfg := st.Config

	g.mu.Lock()
	current := append([]*boundListener(nil), g.listeners...)
	g.mu.Unlock()
	used := make(map[*boundListener]bool)
	type update struct {
		bl *boundListener
		lc config.Listener
	}
	var keep []update
	var fresh []*boundListener
	for _, lc := range cfg.Listeners {
		bl := matchListener(current, used, lc)
		if bl == nil {
			ln, err := listener.Listen(context.Background(), lc.Address, listenOptions(lc))
			if err != nil {
				for _, f := range fresh {
					f.ln.Close()
				}
				return nil, fmt.Errorf("listener %s: %w (the running config stays; an address taken over from another listener needs a restart)", lc.Name, err)
			}
			fresh = append(fresh, newBound(lc, ln))
			continue
		}
		used[bl] = true
		if was := bl.config(); was.TProxy != lc.TProxy {
			restart = append(restart, fmt.Sprintf("listener %s: tproxy changed to %v; kept %v until a restart", lc.Name, lc.TProxy, was.TProxy))
			lc.TProxy = was.TProxy
		}
		keep = append(keep, update{bl, lc})
	}
	restart = append(restart, restartNeeded(g.boot, cfg)...)
	restart = append(restart, g.udpRestart(cfg)...)

	g.state.Store(st)
	g.loops.SetBusyPoll(cfg.BusyPoll)
	g.mu.Lock()
	next := make([]*boundListener, 0, len(keep)+len(fresh))
	for _, u := range keep {
		// The mode decides deferred accepts (listenOptions). Set on every
		// reload, once nothing can fail it any more: one setsockopt, and a
		// switch that failed is tried (and reported) again next time.
		if want := listenOptions(u.lc).DeferAccept; u.bl.setDeferAccept(want) != nil {
			restart = append(restart, fmt.Sprintf("listener %s: mode %s wants TCP_DEFER_ACCEPT %v, which could not be set; restart to apply it", u.lc.Name, u.lc.Mode, want))
		}
		u.bl.cfg.Store(&u.lc)
		next = append(next, u.bl)
	}
	next = append(next, fresh...)
	g.listeners = next
	if g.serveCtx != nil {
		for _, bl := range fresh {
			g.startAccepting(g.serveCtx, bl)
		}
	}
	g.mu.Unlock()
	for _, bl := range current {
		if !used[bl] {
			g.log.Info("listener removed: stopped accepting", "listener", bl.config().Name, "address", listener.AddrPort(bl.ln.Addr()).String())
			bl.close()
		}
	}
	for _, bl := range fresh {
		g.log.Info("listening", "listener", bl.config().Name, "mode", bl.config().Mode, "address", listener.AddrPort(bl.ln.Addr()).String())
	}
	return restart, nil
}

// matchListener finds the bound listener a new listener config takes over:
// the one bound at the same configured address, or for port 0 (any free
// port, in tests) the one of the same name and IP.
func matchListener(current []*boundListener, used map[*boundListener]bool, lc config.Listener) *boundListener {
	for _, bl := range current {
		was := bl.config()
		if used[bl] || was.Address != lc.Address {
			continue
		}
		if lc.Address.Port() != 0 || was.Name == lc.Name {
			return bl
		}
	}
	return nil
}

// restartNeeded lists the settings of cfg that Reload does not apply and
// that differ from what runs: old is the config the gateway started with
// (a setting changed by one reload and put back by the next runs as it
// was, and is not reported again).
func restartNeeded(old, cfg *config.Config) []string {
	var r []string
	if old.Mark != cfg.Mark {
		r = append(r, fmt.Sprintf("mark changed to %#x: new TCP dials use it; the resolver's, the DNS forwarder's and the UDP side's sockets keep %#x until a restart", cfg.Mark, old.Mark))
	}
	if old.Resolver != cfg.Resolver {
		r = append(r, "resolver changed; the running one stays until a restart")
	}
	if old.Log != cfg.Log {
		r = append(r, "log format or output changed; kept until a restart")
	}
	if old.Admin.Address != cfg.Admin.Address || old.Admin.PProf != cfg.Admin.PProf {
		r = append(r, "admin endpoint changed; kept until a restart")
	}
	// The forwarder's socket, upstreams and options are fixed when it
	// starts; the policy its filter asks is the running one, reloaded.
	od, nd := old.DNS, cfg.DNS
	od.Line, nd.Line = 0, 0
	if !reflect.DeepEqual(od, nd) {
		r = append(r, "dns section changed; the running forwarder keeps its settings until a restart (its filter uses the new policy)")
	}
	return r
}
