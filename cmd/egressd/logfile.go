package main

import (
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"
)

// output is where access-log lines go.
type output interface {
	io.Writer
	// Reopen opens the file anew by name, for logrotate's
	// rename-then-signal; reports false for a stream (nothing to reopen).
	Reopen() (bool, error)
	Close() error
}

// stream is stdout or stderr.
type stream struct{ io.Writer }

func (stream) Reopen() (bool, error) { return false, nil }
func (stream) Close() error          { return nil }

// logFile is an access-log file that can be reopened while connections
// write to it. Writers load the current file without a lock; a file
// replaced by Reopen is closed a little later, so that a line being written
// at that moment still lands (in the old, renamed file).
type logFile struct {
	name string
	f    atomic.Pointer[os.File]
}

// closeDelay is how long a replaced file stays open for writes in flight.
const closeDelay = time.Second

func openLogFile(name string) (*logFile, error) {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open access log: %w", err)
	}
	lf := &logFile{name: name}
	lf.f.Store(f)
	return lf, nil
}

func (lf *logFile) Write(p []byte) (int, error) { return lf.f.Load().Write(p) }

func (lf *logFile) Reopen() (bool, error) {
	f, err := os.OpenFile(lf.name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return true, fmt.Errorf("reopen access log: %w", err) // keep writing to the old one
	}
	old := lf.f.Swap(f)
	time.AfterFunc(closeDelay, func() { old.Close() })
	return true, nil
}

func (lf *logFile) Close() error { return lf.f.Load().Close() }
