package gateway

import (
	"context"
	"sync"
	"time"
)

// workerIdle is how long a goroutine that finished a connection may wait
// for the next one; the reaper ends it between one and two such periods
// later.
const workerIdle = 10 * time.Second

// workers are the idle goroutines that run connections' set-up. Reusing
// goroutines keeps their already-grown stacks: a fresh goroutine per
// connection would pay for growing its stack (copystack) every time.
//
// Each idle worker waits on a channel of its own, on a stack. A worker
// waiting in a select on one shared channel, a stop channel and its own
// idle timer would cost a timer reset and a three-way select per
// connection; a plain receive costs neither, and one reaper ends the
// workers idle too long.
type workers struct {
	mu      sync.Mutex
	idle    []*worker // the longest idle at the bottom
	stopped bool
}

type worker struct {
	jobs      chan job // buffered: dispatch never waits on it
	idleSince time.Time
}

// get takes the most recently idle worker off the stack; nil when none is
// idle or the gateway is stopping.
func (ws *workers) get() *worker {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	n := len(ws.idle)
	if n == 0 {
		return nil
	}
	w := ws.idle[n-1]
	ws.idle[n-1] = nil
	ws.idle = ws.idle[:n-1]
	return w
}

// put makes w idle; false when the gateway is stopping and w must end.
func (ws *workers) put(w *worker) bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.stopped {
		return false
	}
	w.idleSince = time.Now()
	ws.idle = append(ws.idle, w)
	return true
}

// reap ends the workers idle since before cutoff.
func (ws *workers) reap(cutoff time.Time) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	n := 0
	for n < len(ws.idle) && ws.idle[n].idleSince.Before(cutoff) {
		close(ws.idle[n].jobs)
		n++
	}
	rest := copy(ws.idle, ws.idle[n:])
	clear(ws.idle[rest:])
	ws.idle = ws.idle[:rest]
}

// stop ends every idle worker, and every busy one once it finishes.
func (ws *workers) stop() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.stopped = true
	for _, w := range ws.idle {
		close(w.jobs)
	}
	ws.idle = nil
}

// dispatch hands j to an idle worker or starts a new one.
func (g *Gateway) dispatch(ctx context.Context, j job) {
	if w := g.workers.get(); w != nil {
		w.jobs <- j
		return
	}
	g.wg.Add(1)
	go g.worker(ctx, &worker{jobs: make(chan job, 1)}, j)
}

// worker serves connections until the reaper or the gateway's stop ends it.
func (g *Gateway) worker(ctx context.Context, w *worker, j job) {
	defer g.wg.Done()
	for {
		g.serveConn(ctx, j)
		if !g.workers.put(w) {
			return
		}
		var ok bool
		if j, ok = <-w.jobs; !ok {
			return
		}
	}
}

// reapWorkers ends idle workers every workerIdle until the gateway stops.
func (g *Gateway) reapWorkers() {
	defer g.wg.Done()
	t := time.NewTicker(workerIdle)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			g.workers.reap(now.Add(-workerIdle))
		case <-g.stopping:
			return
		}
	}
}
