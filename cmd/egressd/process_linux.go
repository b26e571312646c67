package main

import (
	"log/slog"
	"runtime"

	"golang.org/x/sys/unix"
)

// The settings here are the process's own, made by run before the gateway
// starts; no package below main changes them.

// relayProcs gives the process a P for each relay loop beyond the Ps it
// has, and returns how many loops to make: one for each P it had. A busy
// relay loop holds its P while it waits in the kernel (see relay.Loops), so
// with a P each the rest of the process keeps the Ps it had. Setting
// GOMAXPROCS ends the runtime's own updates of it when a container's CPU
// limit changes.
func relayProcs() int {
	n := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(2 * n)
	return n
}

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
