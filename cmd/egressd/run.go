package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/admin"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/gateway"
	"github.com/egressd/egressd/internal/recent"
	"github.com/egressd/egressd/internal/relay"
)

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config `FILE` (YAML); without it an embedded report-only default runs")
	fs.Usage = func() {
		fmt.Fprintln(stderr, `Usage: egressd run [--config FILE]

Runs the gateway. Access log (one line per connection) goes to the configured
output, stdout by default; operational messages go to stderr.

Signals: SIGHUP reloads the config (so does saving the file); SIGUSR1 reopens
the access log file; SIGTERM or SIGINT drains (stop accepting, let live
connections run for shutdown_grace) and exits 0; a second one closes at once.`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	raiseNoFile(log)
	loops := relay.NewLoops(relayProcs())

	var cfg *config.Config
	if *path == "" {
		cfg = config.Default()
		log.Info("no --config given: running the embedded default (report-only: denied names are logged, not blocked; restricted destinations are still refused)")
	} else {
		var err error
		if cfg, err = config.Load(*path); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	}
	pol, err := cfg.Compile()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	out, err := openOutput(cfg.Log.Output, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "egressd:", err)
		return 1
	}
	defer out.Close()

	// A write to a closed pipe or socket fails with EPIPE instead of
	// killing the process: with Go's default, a log pipe whose reader went
	// away (a log shipper's restart) on stdout or stderr ended egressd and
	// every connection it relayed. The lines lost are counted and reported
	// (egressd_access_log_lost_total) and egressd goes on.
	signal.Ignore(syscall.SIGPIPE)
	access := accesslog.New(out, cfg.Log.Format)
	access.SetErrorLog(log)
	decisions := recent.New() // for the admin page
	g := gateway.New(&gateway.State{Config: cfg, Policy: pol}, log, access,
		gateway.WithLoops(loops), gateway.WithRecent(decisions))
	// Both signals are caught from the start, so that a second one during
	// the drain is never lost: the first drains, the second closes live
	// connections at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	// SIGHUP and SIGUSR1 too, for the whole life of the process: left to
	// Go's default, a SIGHUP during start-up or the drain would kill
	// egressd and cut live connections.
	ops := make(chan os.Signal, 4)
	signal.Notify(ops, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(ops)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := g.Bind(ctx); err != nil {
		fmt.Fprintln(stderr, "egressd:", err)
		return 1
	}
	if cfg.Admin.Address.IsValid() {
		srv, err := admin.Listen(ctx, admin.Options{Address: cfg.Admin.Address, PProf: cfg.Admin.PProf,
			Registry: g.Metrics().Registry, Ready: g.Ready, Log: log,
			Recent: decisions, Config: func() *config.Config { return g.State().Config }})
		if err != nil {
			fmt.Fprintln(stderr, "egressd: admin:", err)
			return 1
		}
		go srv.Serve()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
		}()
		log.Info("admin endpoint", "address", srv.Addr().String(), "pprof", cfg.Admin.PProf)
	}
	for _, l := range cfg.Listeners {
		attrs := []any{"listener", l.Name, "mode", l.Mode, "address", g.Addrs()[l.Name].String(),
			"proxy_protocol", l.ProxyProtocol}
		if len(l.ProxyProtocolFrom) > 0 {
			attrs = append(attrs, "proxy_protocol_from", l.ProxyProtocolFrom)
		}
		log.Info("listening", append(attrs, "enforce", cfg.Policy.Enforce, "rules", pol.Len())...)
	}
	if cfg.DNS.Enabled() {
		log.Info("dns forwarder listening", "address", g.DNSAddr().String(), "upstreams", len(cfg.DNS.Upstreams),
			"filter", cfg.DNS.Filter, "strip_ech", cfg.DNS.StripECH)
	}
	log.Info("limits", "limits", cfg.Limits.String(), "shutdown_grace", cfg.ShutdownGrace, "config_hash", cfg.Hash)

	r := &reloader{path: *path, g: g, log: log, stopped: make(chan struct{})}
	go r.signals(ctx, ops, out)
	if *path != "" {
		go r.watch(ctx)
	}
	go func() {
		s := <-sigs
		log.Info("draining: /readyz now fails; a second signal closes live connections at once",
			"signal", s.String(), "grace", g.State().Config.ShutdownGrace)
		cancel()
		select {
		case <-sigs:
			log.Warn("second signal: closing live connections now")
			g.Abort()
		case <-r.stopped:
		}
	}()
	g.Serve(ctx, 0)
	close(r.stopped)
	log.Info("stopped")
	return 0
}

// openOutput opens the access log's destination: stdout, stderr or a file
// that SIGUSR1 reopens.
func openOutput(name string, stdout io.Writer) (output, error) {
	switch name {
	case "", "stdout":
		return stream{stdout}, nil
	case "stderr":
		return stream{os.Stderr}, nil
	}
	return openLogFile(name)
}

func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
