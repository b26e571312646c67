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
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/gateway"
)

// shutdownGrace is how long live connections may run after SIGTERM/SIGINT.
const shutdownGrace = 30 * time.Second

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config `FILE` (YAML); without it an embedded report-only default runs")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: egressd run [--config FILE]\n\nRuns the gateway. Access log (one line per connection) goes to the configured output, stdout by default; operational messages go to stderr.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	var cfg *config.Config
	if *path == "" {
		cfg = config.Default()
		log.Info("no --config given: running the embedded default (report-only: decisions are logged, nothing is blocked)")
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
	out, closeOut, err := openOutput(cfg.Log.Output, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "egressd:", err)
		return 1
	}
	defer closeOut()

	g := gateway.New(&gateway.State{Config: cfg, Policy: pol}, log, accesslog.New(out, cfg.Log.Format))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := g.Bind(ctx); err != nil {
		fmt.Fprintln(stderr, "egressd:", err)
		return 1
	}
	for _, l := range cfg.Listeners {
		log.Info("listening", "listener", l.Name, "mode", l.Mode, "address", g.Addrs()[l.Name].String(),
			"enforce", cfg.Policy.Enforce, "rules", pol.Len())
	}
	if cfg.DNS.Enabled() {
		log.Info("dns forwarder listening", "address", g.DNSAddr().String(), "upstreams", len(cfg.DNS.Upstreams),
			"filter", cfg.DNS.Filter, "strip_ech", cfg.DNS.StripECH)
	}

	// A second signal during the drain closes everything at once.
	go func() {
		<-ctx.Done()
		stop()
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
		<-c
		log.Warn("second signal: exiting now")
		os.Exit(1)
	}()
	g.Serve(ctx, shutdownGrace)
	log.Info("stopped")
	return 0
}

func openOutput(name string, stdout io.Writer) (io.Writer, func(), error) {
	switch name {
	case "", "stdout":
		return stdout, func() {}, nil
	case "stderr":
		return os.Stderr, func() {}, nil
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("open access log: %w", err)
	}
	return f, func() { f.Close() }, nil
}

func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
