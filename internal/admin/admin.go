// Package admin serves egressd's operator endpoint over HTTP: a page of
// recent decisions at / for the operator, /metrics for Prometheus,
// /healthz (the process serves) and /readyz (it should get traffic) for
// load balancers and Kubernetes probes, and, only when asked for,
// /debug/pprof/.
//
// It is a separate listener from the gateway's, on loopback in the
// examples: nothing here is meant for the workloads whose traffic egressd
// filters.
package admin

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/limit"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/recent"
)

// Options say what the endpoint serves.
type Options struct {
	Address  netip.AddrPort
	PProf    bool
	Registry *prometheus.Registry
	// Ready answers /readyz: 200 with why when ok, else 503 with why.
	Ready func() (ok bool, why string)
	Log   *slog.Logger
	// Recent and Config feed the page at "/": the decisions recorded and
	// the running config (its rules, its users). Without both there is
	// no page.
	Recent *recent.Recorder
	Config func() *config.Config
}

// Server is a bound admin endpoint.
type Server struct {
	ln  net.Listener
	srv *http.Server
	log *slog.Logger
}

// Listen binds the endpoint; Serve then answers on it.
func Listen(ctx context.Context, o Options) (*Server, error) {
	// Bound as the gateway's listeners are (listener.Listen): of the
	// address's own family only, plain TCP.
	ln, err := listener.Listen(ctx, o.Address, listener.Options{})
	if err != nil {
		return nil, err
	}
	// A response must be written within writeTimeout, so that a client
	// that never reads one does not hold its connection; the pprof
	// handlers, which write for as many seconds as they are asked to,
	// lift it (unbounded). An idle keep-alive connection is closed after
	// IdleTimeout instead of holding an fd for ever.
	srv := &http.Server{Handler: Handler(o), ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout: writeTimeout, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	return &Server{ln: &capped{Listener: ln}, srv: srv, log: o.Log}, nil
}

// Addr is the bound address (tests bind port 0).
func (s *Server) Addr() netip.AddrPort {
	ap, _ := netip.ParseAddrPort(s.ln.Addr().String())
	return ap
}

// Serve answers until Shutdown.
func (s *Server) Serve() {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("admin endpoint stopped", "err", err)
	}
}

// Shutdown stops the endpoint, letting a scrape in progress finish.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Handler routes the admin endpoints.
func Handler(o Options) http.Handler {
	mux := http.NewServeMux()
	if o.Recent != nil && o.Config != nil {
		mux.HandleFunc("GET /{$}", page(o.Recent, o.Config))
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := o.Ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		w.Write([]byte(why + "\n"))
	})
	if o.PProf {
		mux.HandleFunc("/debug/pprof/", unbounded(pprof.Index))
		mux.HandleFunc("/debug/pprof/cmdline", unbounded(pprof.Cmdline))
		mux.HandleFunc("/debug/pprof/profile", unbounded(pprof.Profile))
		mux.HandleFunc("/debug/pprof/symbol", unbounded(pprof.Symbol))
		mux.HandleFunc("/debug/pprof/trace", unbounded(pprof.Trace))
	}
	return mux
}

// writeTimeout bounds writing one response (the pprof handlers excepted).
const writeTimeout = 30 * time.Second

// unbounded lifts writeTimeout for h: a profile or trace writes for as
// many seconds as it is asked to. pprof is off unless the config turns
// it on, for operators.
func unbounded(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).SetWriteDeadline(time.Time{})
		h(w, r)
	}
}

// The endpoint's connections are capped: maxConns in all, maxPerSource
// from one address (one IPv6 /64). In a cluster it listens on the pod's
// address, where the workloads egressd filters can reach it too; without
// a cap one of them that opened connections and kept them took the file
// descriptors the gateway's relays need, and with one cap only it could
// take every place and fail the kubelet's probes; and with a share each,
// enough sources together could, so the last places are kept for sources
// that hold none. Past a cap a connection is closed as soon as it is
// accepted. Probes, a scraper and an
// operator's browser hold a few.
const (
	maxConns     = 64
	maxPerSource = 8
	reserved     = 8 // of maxConns, for sources holding none
)

// capped is a listener that holds its connections to the caps.
type capped struct {
	net.Listener
	open      atomic.Int32
	perSource limit.PerSource
}

func (l *capped) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := listener.AddrPort(c.RemoteAddr()).Addr()
		n := l.open.Add(1)
		// The last places are for sources that hold none: many sources
		// holding their share each cannot fill them, and a probe or a
		// scraper, which holds one at a time, gets in.
		if n > maxConns || n > maxConns-reserved && l.perSource.Open(src) > 0 {
			l.open.Add(-1)
			c.Close()
			continue
		}
		if !l.perSource.Acquire(src, maxPerSource) {
			l.open.Add(-1)
			c.Close()
			continue
		}
		return &counted{Conn: c, l: l, src: src}, nil
	}
}

// counted gives its place back when it is closed, once.
type counted struct {
	net.Conn
	l    *capped
	src  netip.Addr
	once sync.Once
}

func (c *counted) Close() error {
	c.once.Do(func() {
		c.l.perSource.Release(c.src)
		c.l.open.Add(-1)
	})
	return c.Conn.Close()
}
