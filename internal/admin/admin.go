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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/egressd/egressd/internal/config"
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
	// No WriteTimeout: /debug/pprof/profile writes for as many seconds as
	// it is asked to. An idle keep-alive connection is closed after
	// IdleTimeout instead of holding an fd for ever.
	srv := &http.Server{Handler: Handler(o), ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	return &Server{ln: ln, srv: srv, log: o.Log}, nil
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
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}
