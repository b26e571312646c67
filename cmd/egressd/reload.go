package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"syscall"

	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/gateway"
)

// reloader applies a changed config file to a running gateway.
type reloader struct {
	path    string
	g       *gateway.Gateway
	log     *slog.Logger
	stopped chan struct{} // closed when the gateway has stopped

	// seen is the config.Hash of the file as the last reload read it,
	// loaded or refused: the directory also sees events for other files (a
	// log file kept next to the config), and a broken file must not be
	// refused, logged and counted again for each of them. mu serialises
	// reloads from SIGHUP and from the file watch.
	mu   sync.Mutex
	seen string
}

// signals handles SIGHUP (reload) and SIGUSR1 (reopen the access log)
// until the gateway has stopped: during the drain (ctx done) SIGUSR1 still
// reopens the log, for a logrotate that runs meanwhile, and SIGHUP is
// ignored with a note.
func (r *reloader) signals(ctx context.Context, c <-chan os.Signal, out output) {
	for {
		select {
		case <-r.stopped:
			return
		case s := <-c:
			if s == syscall.SIGUSR1 {
				switch reopened, err := out.Reopen(); {
				case err != nil:
					r.log.Error("SIGUSR1: access log not reopened; still writing to the old file", "err", err)
				case reopened:
					r.log.Info("SIGUSR1: access log reopened")
				default:
					r.log.Info("SIGUSR1: the access log is a stream; nothing to reopen")
				}
				continue
			}
			if r.path == "" {
				r.log.Warn("SIGHUP: running the embedded default; there is no file to reload")
				continue
			}
			if ctx.Err() != nil {
				r.log.Warn("SIGHUP while draining: not reloaded")
				continue
			}
			r.reload("SIGHUP", true)
		}
	}
}

// reload loads, compiles and applies the config file. A file that fails
// leaves the running config in place; every problem is logged as
// FILE:LINE: message and the failure is counted. Unless forced (SIGHUP), a
// file whose contents did not change since the last reload read it, loaded
// or refused, is left alone: the directory also sees events for other
// files.
func (r *reloader) reload(why string, force bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.g.Metrics()
	data, err := os.ReadFile(r.path)
	if err != nil {
		m.Reload(false, "")
		r.log.Error("reload failed; the running config stays", "trigger", why, "err", err)
		return
	}
	hash := config.Hash(data)
	if r.seen == "" { // nothing read yet: compare with what runs
		r.seen = r.g.State().Config.Hash
	}
	if hash == r.seen && !force {
		return
	}
	r.seen = hash
	cfg, err := config.Parse(r.path, data)
	// Each failure is counted before it is logged: whoever reads the log
	// line and then the metric sees the count.
	if err != nil {
		m.Reload(false, "")
		var errs config.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				r.log.Error("reload failed; the running config stays", "trigger", why, "problem", e.Error())
			}
		} else {
			r.log.Error("reload failed; the running config stays", "trigger", why, "err", err)
		}
		return
	}
	pol, err := cfg.Compile()
	if err != nil {
		m.Reload(false, "")
		r.log.Error("reload failed; the running config stays", "trigger", why, "err", err)
		return
	}
	restart, err := r.g.Reload(&gateway.State{Config: cfg, Policy: pol})
	if err != nil {
		m.Reload(false, "")
		r.log.Error("reload failed; the running config stays", "trigger", why, "err", err)
		return
	}
	for _, s := range restart {
		r.log.Warn("needs restart", "change", s)
	}
	m.Reload(true, cfg.Hash)
	r.log.Info("config reloaded", "trigger", why, "config_hash", cfg.Hash, "rules", pol.Len(), "limits", cfg.Limits.String())
}
