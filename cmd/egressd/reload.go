package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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

// debounce is how long the config directory must be quiet before a change
// is read: an editor's save or a ConfigMap update is several events.
const debounce = 200 * time.Millisecond

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

// watch reloads when the config file changes. It watches the file's
// directory, not the file: editors save by writing a new file and renaming
// it over the old one, and Kubernetes updates a mounted ConfigMap by
// swapping the directory's "..data" symlink; either replaces the inode a
// file watch would follow. Where the path is a symlink, the directory of
// its target is watched too.
//
// The directory holds other files too, an access log kept beside the
// config among them. So the watch asks for the events that end a change
// (watchMask), not for each write, and a reload follows the first event
// of a burst by debounce, however many more come: a file written more
// often than that must not put a reload off for as long as it is written.
func (r *reloader) watch(ctx context.Context) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		r.log.Error("cannot watch the config file; reload with SIGHUP", "err", err)
		return
	}
	f := os.NewFile(uintptr(fd), "inotify") // read through the runtime's poller
	dirs := []string{filepath.Dir(r.path)}
	if target, err := filepath.EvalSymlinks(r.path); err == nil && filepath.Dir(target) != dirs[0] {
		dirs = append(dirs, filepath.Dir(target))
	}
	for _, d := range dirs {
		if _, err := unix.InotifyAddWatch(fd, d, watchMask); err != nil {
			f.Close()
			r.log.Error("cannot watch the config directory; reload with SIGHUP", "dir", d, "err", err)
			return
		}
	}
	r.log.Info("watching the config file for changes", "dirs", dirs)
	changed := make(chan struct{}, 1)
	go func() {
		// Each read returns whole events; what they name does not
		// matter (reload compares the file's contents), only that
		// something in the directories changed.
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				if !errors.Is(err, os.ErrClosed) {
					r.log.Warn("config watch ended; reload with SIGHUP", "err", err)
				}
				return
			}
			select {
			case changed <- struct{}{}:
			default: // one already waits to be seen
			}
		}
	}()
	defer f.Close() // ends the reading goroutine
	timer := time.NewTimer(0)
	<-timer.C
	pending := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			if !pending {
				pending = true
				timer.Reset(debounce)
			}
		case <-timer.C:
			pending = false
			r.reload("file changed", false)
		}
	}
}

// watchMask is what ends a change to a file in the config's directory: a
// write's close, a rename into it (an editor's save, a ConfigMap's symlink
// swap), a creation (a new symlink) or a deletion. Not IN_MODIFY, which
// every write to a file kept open makes.
const watchMask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_CREATE | unix.IN_DELETE

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
