// Package gateway runs egressd's listeners and carries each connection
// through its life: accept → peek → decide → dial → relay → log. It owns
// every goroutine it starts and waits for them on shutdown.
package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/policy"
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
	names  *upstream.Cache

	mu        sync.Mutex
	listeners []*boundListener
	conns     map[*net.TCPConn]struct{}
	wg        sync.WaitGroup // accept loops and connections
}

type boundListener struct {
	cfg config.Listener
	ln  *net.TCPListener
}

// New returns a Gateway for st. log receives operational messages, access
// one line per connection.
func New(st *State, log *slog.Logger, access *accesslog.Logger) *Gateway {
	g := &Gateway{log: log, access: access, conns: make(map[*net.TCPConn]struct{})}
	g.state.Store(st)
	var r upstream.Resolver = upstream.System{}
	if st.Config.Resolver.IsValid() {
		r = &upstream.DNS{Server: st.Config.Resolver, Timeout: 3 * time.Second}
	}
	g.names = &upstream.Cache{Resolver: r}
	return g
}

// Bind opens every listener of the config. On an error, those already
// bound are closed.
func (g *Gateway) Bind(ctx context.Context) error {
	st := g.state.Load()
	for _, lc := range st.Config.Listeners {
		ln, err := listener.Listen(ctx, lc.Address, listener.Options{TProxy: lc.TProxy})
		if err != nil {
			g.closeListeners()
			return errors.Join(errors.New("listener "+lc.Name), err)
		}
		g.mu.Lock()
		g.listeners = append(g.listeners, &boundListener{cfg: lc, ln: ln})
		g.mu.Unlock()
	}
	return nil
}

// Addrs returns the bound address of each listener, by name; tests that
// bind port 0 learn their ports here.
func (g *Gateway) Addrs() map[string]netip.AddrPort {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := make(map[string]netip.AddrPort, len(g.listeners))
	for _, bl := range g.listeners {
		m[bl.cfg.Name] = listener.AddrPort(bl.ln.Addr())
	}
	return m
}

// Serve accepts on every bound listener until ctx is done, then stops
// accepting and waits for live connections until grace has passed, when it
// closes the rest. It returns when every goroutine it started has ended.
func (g *Gateway) Serve(ctx context.Context, grace time.Duration) {
	g.mu.Lock()
	for _, bl := range g.listeners {
		g.wg.Add(1)
		go g.acceptLoop(ctx, bl)
	}
	g.mu.Unlock()
	<-ctx.Done()
	g.closeListeners()
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(grace):
	}
	g.mu.Lock()
	n := len(g.conns)
	for c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.log.Info("shutdown grace over; closed live connections", "count", n)
	<-done
}

func (g *Gateway) closeListeners() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, bl := range g.listeners {
		bl.ln.Close()
	}
}

// acceptLoop accepts until the listener closes. Temporary errors (EMFILE,
// ENFILE, ECONNABORTED…) back off, doubling from 5 ms to 1 s, instead of
// spinning.
func (g *Gateway) acceptLoop(ctx context.Context, bl *boundListener) {
	defer g.wg.Done()
	// Connections outlive the accept loop: on shutdown they drain for the
	// grace period instead of having their lookups and dials cancelled.
	connCtx := context.WithoutCancel(ctx)
	var backoff time.Duration
	for {
		c, err := bl.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			g.log.Warn("accept failed; backing off", "listener", bl.cfg.Name, "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		g.track(c, true)
		g.wg.Add(1)
		go g.serveConn(connCtx, bl, c)
	}
}

func (g *Gateway) track(c *net.TCPConn, add bool) {
	g.mu.Lock()
	if add {
		g.conns[c] = struct{}{}
	} else {
		delete(g.conns, c)
	}
	g.mu.Unlock()
}

func (g *Gateway) serveConn(ctx context.Context, bl *boundListener, c *net.TCPConn) {
	defer g.wg.Done()
	defer g.track(c, false)
	g.handle(ctx, bl, c)
}
