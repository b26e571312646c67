// Package gateway runs egressd's listeners and carries each connection
// through its life: accept → peek → decide → dial → relay → log. It owns
// every goroutine it starts and waits for them on shutdown.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"github.com/egressd/egressd/internal/limit"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/authguard"
	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/dnsproxy"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/namecache"
	"github.com/egressd/egressd/internal/policy"
	"github.com/egressd/egressd/internal/recent"
	"github.com/egressd/egressd/internal/relay"
	"github.com/egressd/egressd/internal/upstream"
)

// State is what a connection decides with: a config and its compiled
// policy. It is replaced whole, never mutated, so a connection sees one
// consistent version from start to end.
type State struct {
	Config *config.Config
	Policy *policy.Policy
}

// Gateway serves the listeners of a config.
type Gateway struct {
	log    *slog.Logger
	access *accesslog.Logger
	state  atomic.Pointer[State]
	// boot is the config the gateway started with: what the settings a
	// reload does not apply (restartNeeded) still run with, whatever
	// reloads came since.
	boot *config.Config
	// lookups caches egressd's own DNS look-ups: names it resolves to dial
	// (sni listeners, resolve, proxy requests) or to verify an SNI.
	lookups *upstream.Cache

	// clientNames is what each client resolved through egressd's DNS
	// forwarder (dns), by client; both nil when the config has no dns
	// section.
	clientNames *namecache.Cache
	dns         *dnsproxy.Server
	// auth bounds proxy password checks (bcrypt): at most a few at once,
	// none for a source that keeps failing. One for the gateway's life,
	// so that a reload does not forgive a source that is backing off.
	auth *authguard.Guard
	// rightPasswords spares a right password its bcrypt check for a
	// minute (authcache.go).
	rightPasswords rightPasswords
	// loops relay the connections; the gateway owns them (WithLoops) and
	// Serve closes them once every relay has ended.
	loops *relay.Loops
	// recent remembers the latest decisions for the admin page
	// (WithRecent); nil remembers nothing.
	recent *recent.Recorder
	// ja4 remembers recent hellos' fingerprints (clienthello.JA4Memo):
	// most connections' JA4 costs no hashing and no allocation.
	ja4 *clienthello.JA4Memo
	// onLoop counts the connections a relay loop set up itself (inline.go),
	// for egressd_loop_setups_total and tests.
	onLoop atomic.Int64

	mu        sync.Mutex
	listeners []*boundListener
	udp       []*udpListener         // the UDP sides of listeners with udp: true (quic.go)
	conns     map[io.Closer]struct{} // live connections: sockets in set-up, relays
	closedAll bool                   // the drain closed every live connection
	wg        sync.WaitGroup         // accept loops, workers and their reaper
	workers   workers
	// relayLog takes the log lines of relays the loop has ended to
	// writeRelayLogs, so that a slow log writer never stalls a relay loop
	// (and every connection on it); Serve starts and ends it.
	relayLog chan *accesslog.Record
	logDone  chan struct{}
	held     heldLogs      // relayed lines not yet on relayLog (see holdLog)
	stopping chan struct{} // closed when accepting has stopped

	metrics *metrics.Metrics
	self    ownAddrs        // what it never dials: its host's addresses (self.go)
	active  atomic.Int64    // connections accepted and not yet closed
	flows   atomic.Int64    // QUIC flows held, under the same max_connections (admitFlow)
	pending atomic.Int64    // connections accepted and not yet past peek
	sources limit.PerSource // open connections per source, when limited
	// pendingSources counts pending handshakes per peer address (see
	// count): one client may not take every pending place.
	pendingSources limit.PerSource
	// silentSources counts, per source, the server-first connections
	// whose client is silent, waiting for its first bytes (late.go).
	silentSources limit.PerSource
	bound         atomic.Bool // Bind succeeded
	draining      atomic.Bool // Serve's context is done
	serveCtx      context.Context
	// setupCtx is the context of every connection's set-up (its lookups
	// and dials), under mu: Serve's values, done not with Serve's context
	// but when the drain ends (endSetups), so that a set-up still dialling
	// then gives up, as relays are closed then, instead of holding Serve
	// for a connect timeout.
	setupCtx  context.Context
	endSetups context.CancelCauseFunc
	reloadMu  sync.Mutex    // one Reload at a time
	abort     chan struct{} // closed by Abort: end the drain now
	abortOne  sync.Once
	limitLog  limit.EverySecond // a limit rejection is logged at most once a second
}

// boundListener is one listening socket. Its config is replaced on reload
// (a rule or mode change) while the socket stays, so it sits behind an
// atomic pointer that each connection loads once.
type boundListener struct {
	cfg atomic.Pointer[config.Listener]
	ln  *net.TCPListener
	// raw, when set, is ln's socket accepted on by a relay loop (see
	// inline.go); ln itself is closed then. Under Gateway.mu.
	raw *relay.Listener
}

func newBound(lc config.Listener, ln *net.TCPListener) *boundListener {
	bl := &boundListener{ln: ln}
	bl.cfg.Store(&lc)
	return bl
}

// config returns the listener's current config; callers must not modify it.
func (bl *boundListener) config() *config.Listener { return bl.cfg.Load() }

// Option configures a Gateway in New.
type Option func(*Gateway)

// WithLoops hands the gateway the relay loops its connections run on;
// Serve closes them. Without it the gateway makes its own
// (relay.NewLoops(0)). A set serves one gateway: New sets its OnBatch to
// hand the gateway's held log lines over.
func WithLoops(ls *relay.Loops) Option { return func(g *Gateway) { g.loops = ls } }

// WithRecent hands the gateway a recorder that every connection's log line
// is also given to, for the admin page.
func WithRecent(r *recent.Recorder) Option { return func(g *Gateway) { g.recent = r } }

// New returns a Gateway for st. log receives operational messages, access
// one line per connection.
func New(st *State, log *slog.Logger, access *accesslog.Logger, opts ...Option) *Gateway {
	g := &Gateway{log: log, access: access, conns: make(map[io.Closer]struct{}), ja4: clienthello.NewJA4Memo(),
		stopping: make(chan struct{}), abort: make(chan struct{}),
		relayLog: make(chan *accesslog.Record, relayLogQueue), logDone: make(chan struct{})}
	for _, o := range opts {
		o(g)
	}
	if g.loops == nil {
		g.loops = relay.NewLoops(0)
	}
	g.loops.OnBatch(g.flushHeld)
	g.loops.SetBusyPoll(st.Config.BusyPoll)
	g.state.Store(st)
	g.boot = st.Config
	gauges := metrics.Gauges{
		Active:     func() float64 { return float64(g.active.Load()) },
		Pending:    func() float64 { return float64(g.pending.Load()) },
		LogQueue:   func() float64 { return float64(len(g.relayLog) + int(g.held.n.Load())) },
		LogLost:    func() float64 { return float64(g.access.Lost()) },
		LoopSetUps: func() float64 { return float64(g.onLoop.Load()) },
	}
	g.auth = authguard.New(authguard.Config{Log: log})
	gauges.AuthChecks = g.authCounts
	if st.Config.DNS.Enabled() {
		gauges.DNS = g.dnsCounts
	}
	if hasUDP(st.Config) {
		gauges.UDP = g.udpCounts
	}
	g.metrics = metrics.New(gauges)
	g.metrics.Loaded(st.Config.Hash)
	var r upstream.Resolver = upstream.System{Mark: st.Config.Mark}
	if st.Config.Resolver.IsValid() {
		r = &upstream.DNS{Server: st.Config.Resolver, Mark: st.Config.Mark}
	}
	g.lookups = &upstream.Cache{Resolver: r}
	if d := st.Config.DNS; d.Enabled() {
		g.clientNames = namecache.New(d.MaxEntries, d.MaxEntriesPerClient)
		g.dns = dnsproxy.New(dnsproxy.Config{
			Address: d.Address, Upstreams: d.Upstreams, Remember: d.Remember, Timeout: d.Timeout, Mark: st.Config.Mark,
			Filter: d.Filter, StripECH: d.StripECH, StripH3: d.StripH3, RateLimit: d.RateLimit, Clients: d.Clients,
			MaxTCPConns: d.MaxTCPConns, MaxTCPConnsPerSource: d.MaxTCPConnsPerSource,
		}, g.clientNames, func() (*policy.Policy, bool) {
			st := g.state.Load()
			return st.Policy, st.Config.Policy.Enforce
		}, log, access)
	}
	return g
}

// Stats are the counters of the DNS forwarder and its name memory; zero
// without a dns section.
type Stats struct {
	DNS   dnsproxy.Stats
	Names namecache.Stats
}

// Stats returns a snapshot of the counters.
func (g *Gateway) Stats() Stats {
	if g.dns == nil {
		return Stats{}
	}
	return Stats{DNS: g.dns.Stats(), Names: g.clientNames.Stats()}
}

// dnsCounts is Stats in the shape the metrics expose.
func (g *Gateway) dnsCounts() metrics.DNSCounts {
	s := g.Stats()
	return metrics.DNSCounts{
		Queries: map[string]uint64{
			"forwarded": s.DNS.Forwarded, "refused": s.DNS.Refused, "would_refuse": s.DNS.WouldRefuse,
			"failed": s.DNS.Failed, "rate_limited": s.DNS.RateLimited, "not_client": s.DNS.NotClient,
			"overloaded": s.DNS.Overloaded, "malformed": s.DNS.Malformed,
		},
		Entries:   s.Names.Entries,
		Evictions: s.Names.Evictions,
	}
}

// DNSAddr returns the DNS forwarder's bound address, invalid without one.
func (g *Gateway) DNSAddr() netip.AddrPort {
	if g.dns == nil {
		return netip.AddrPort{}
	}
	return g.dns.Addr()
}

// Bind opens every listener of the config. On an error, those already
// bound are closed.
func (g *Gateway) Bind(ctx context.Context) error {
	st := g.state.Load()
	for _, lc := range st.Config.Listeners {
		ln, err := listener.Listen(ctx, lc.Address, listenOptions(lc))
		if err != nil {
			g.closeListeners()
			return fmt.Errorf("listener %s: %w", lc.Name, err) // err names the address
		}
		g.mu.Lock()
		g.listeners = append(g.listeners, newBound(lc, ln))
		g.mu.Unlock()
		if lc.UDP {
			if err := g.bindUDP(ctx, lc); err != nil {
				g.closeListeners()
				return err
			}
		}
	}
	if g.dns != nil {
		if err := g.dns.Start(); err != nil {
			g.closeListeners()
			return err
		}
	}
	g.bound.Store(true)
	return nil
}

// listenOptions shapes a listener's socket. Only transparent listeners
// see server-first protocols, so every other mode defers accepts until the
// client's first bytes.
func listenOptions(lc config.Listener) listener.Options {
	return listener.Options{TProxy: lc.TProxy, DeferAccept: lc.Mode != config.ModeTransparent}
}

// Addrs returns the bound address of each listener, by name; tests that
// bind port 0 learn their ports here.
func (g *Gateway) Addrs() map[string]netip.AddrPort {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := make(map[string]netip.AddrPort, len(g.listeners))
	for _, bl := range g.listeners {
		m[bl.config().Name] = listener.AddrPort(bl.ln.Addr())
	}
	return m
}

// Serve accepts on every bound listener until ctx is done, then drains:
// Ready turns false, the listeners close, and live connections run until
// grace has passed (or Abort is called), when the rest are closed. A grace
// of 0 means the running config's shutdown_grace. Serve returns when every
// goroutine it started has ended.
func (g *Gateway) Serve(ctx context.Context, grace time.Duration) {
	go g.writeRelayLogs()
	defer func() {
		// Every relay has ended (Serve waited for them): its line is
		// held or queued, and the loops have nothing left to relay.
		g.closeHeld()
		close(g.relayLog)
		<-g.logDone
		g.loops.Close()
	}()
	g.wg.Add(1)
	go g.reapWorkers()
	g.mu.Lock()
	g.serveCtx = ctx
	g.setupCtx, g.endSetups = context.WithCancelCause(context.WithoutCancel(ctx))
	defer g.endSetups(nil)
	for _, bl := range g.listeners {
		g.startAccepting(ctx, bl)
	}
	g.serveUDP()
	g.mu.Unlock()
	<-ctx.Done()
	// /readyz fails from here; a Reload from here on is refused, and one
	// under way (under reloadMu) ends before the listeners close below, so
	// that none can add a listener after they are closed.
	g.draining.Store(true)
	if delay := g.state.Load().Config.ShutdownDelay; delay > 0 {
		g.log.Info("draining: listeners accept for shutdown_delay while load balancers see /readyz fail", "shutdown_delay", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-g.abort:
		}
		t.Stop()
	}
	g.reloadMu.Lock()
	g.closeListeners()
	g.reloadMu.Unlock()
	if grace <= 0 {
		grace = g.state.Load().Config.ShutdownGrace
	}
	graceEnd := time.Now().Add(grace) // the DNS forwarder's stop below is part of it
	close(g.stopping)
	g.workers.stop()
	if g.dns != nil {
		// DNS answers are short: no grace beyond a few seconds for those
		// in flight. Connections keep their names (the memory stays).
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		g.dns.Shutdown(sctx)
		cancel()
	}
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	g.mu.Lock()
	live := len(g.conns)
	g.mu.Unlock()
	if live > 0 {
		g.log.Info("draining: stopped accepting; live connections run until the grace period ends", "live", live, "grace", grace)
	}
	timer := time.NewTimer(time.Until(graceEnd))
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
	case <-g.abort:
	}
	g.mu.Lock()
	n := len(g.conns)
	for c := range g.conns {
		c.Close()
	}
	g.closedAll = true
	g.mu.Unlock()
	g.endSetups(errShuttingDown)
	g.log.Info("drain over; closed live connections", "count", n)
	<-done
}

// errShuttingDown ends the set-ups still under way when the drain ends.
var errShuttingDown = errors.New("gateway shutting down")

func (g *Gateway) closeListeners() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, bl := range g.listeners {
		bl.close()
	}
	g.stopUDP()
}

// acceptLoop accepts until the listener closes. Temporary errors (EMFILE,
// ENFILE, ECONNABORTED…) back off, doubling from 5 ms to 1 s, instead of
// spinning.
//
// connCtx is the set-ups' context (setupCtx): connections outlive the
// accept loop, and on shutdown they drain for the grace period instead of
// having their lookups and dials cancelled at once.
func (g *Gateway) acceptLoop(ctx, connCtx context.Context, bl *boundListener) {
	defer g.wg.Done()
	var backoff time.Duration
	for {
		c, err := bl.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			g.metrics.AcceptError()
			g.log.Warn("accept failed; backing off", "listener", bl.config().Name, "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		held, ok := g.admit(c, bl.config().ProxyProtocol)
		if !ok {
			continue
		}
		g.track(c, true)
		g.dispatch(connCtx, job{bl: bl, c: c, pendingSrc: held})
	}
}

// job is one accepted connection waiting for a goroutine.
type job struct {
	bl *boundListener
	c  *net.TCPConn
	// pendingSrc: admit took a pending place of c's peer address, which
	// the session gives back with its pending time.
	pendingSrc bool
	// s and first: a connection a relay loop accepted and could not set
	// up itself (inline.go), with the bytes it read already (a peek
	// buffer, or nil).
	s     *session
	first []byte
}

func (g *Gateway) track(c io.Closer, add bool) {
	g.mu.Lock()
	if add {
		g.conns[c] = struct{}{}
	} else {
		delete(g.conns, c)
	}
	g.mu.Unlock()
}

// serveConn runs a connection's set-up. When handle hands it to the relay
// loop, the loop's callback (relayed) ends it; otherwise it ends here.
func (g *Gateway) serveConn(ctx context.Context, j job) {
	var relaying bool
	if j.s != nil {
		relaying = j.s.handle(ctx, j.first)
	} else {
		relaying = g.handle(ctx, j.bl, j.c, j.pendingSrc)
	}
	if relaying {
		return
	}
	c := j.c
	g.track(c, false)
	g.active.Add(-1)
}

// handOff files a relay in place of the accepted socket it took over, so
// that a drain closes the relay, and starts it. A relay handed off after the
// drain closed everything is closed at once.
func (g *Gateway) handOff(c *net.TCPConn, rc *relay.Conn) {
	g.wg.Add(1) // Serve waits for relays as for goroutines: relayed calls Done
	g.mu.Lock()
	if c != nil { // nil for a socket a relay loop accepted (inline.go)
		delete(g.conns, c)
	}
	g.conns[rc] = struct{}{}
	late := g.closedAll
	g.mu.Unlock()
	if late {
		rc.Close()
	}
	rc.Start()
}
