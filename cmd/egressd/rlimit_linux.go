package main

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// raiseNoFile raises the soft limit on open files to the hard limit: every
// connection costs two descriptors, and a soft limit of 1024 would cap
// egressd at about 500 connections. Go (since 1.19) already does this when
// the process starts, so this usually finds nothing to do; it is explicit
// here so that the limit in force is logged and does not depend on the
// runtime's behaviour.
func raiseNoFile(log *slog.Logger) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot read the open-files limit", "err", err)
		return
	}
	if lim.Cur >= lim.Max {
		log.Info("open-files limit", "soft", lim.Cur, "hard", lim.Max)
		return
	}
	was := lim.Cur
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot raise the open-files limit", "soft", was, "hard", lim.Max, "err", err)
		return
	}
	log.Info("open-files limit raised to the hard limit", "was", was, "soft", lim.Cur)
}
