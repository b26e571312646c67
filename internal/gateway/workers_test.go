package gateway

import (
	"testing"
	"time"
)

// TestWorkers checks the idle stack: the most recently idle worker is
// reused first, reap ends only those idle since before its cutoff, and
// after stop no worker is handed out or kept.
func TestWorkers(t *testing.T) {
	var ws workers
	base := time.Now()
	w := make([]*worker, 3)
	for i := range w {
		w[i] = &worker{jobs: make(chan job, 1)}
		if !ws.put(w[i]) {
			t.Fatal("put refused before stop")
		}
		w[i].idleSince = base.Add(time.Duration(i) * time.Second)
	}
	if got := ws.get(); got != w[2] {
		t.Fatal("get did not return the most recently idle worker")
	}
	ws.put(w[2])
	w[2].idleSince = base.Add(2 * time.Second)
	ws.reap(base.Add(1500 * time.Millisecond)) // w[0] and w[1] idle too long
	for i, wantClosed := range []bool{true, true, false} {
		select {
		case _, ok := <-w[i].jobs:
			if ok || !wantClosed {
				t.Errorf("worker %d: ended %v, want %v", i, !ok, wantClosed)
			}
		default:
			if wantClosed {
				t.Errorf("worker %d was not ended by reap", i)
			}
		}
	}
	if got := ws.get(); got != w[2] {
		t.Fatal("reap removed a worker idle for less than the cutoff")
	}
	ws.put(w[2])
	ws.stop()
	if _, ok := <-w[2].jobs; ok {
		t.Error("stop left an idle worker waiting")
	}
	if ws.get() != nil || ws.put(&worker{jobs: make(chan job, 1)}) {
		t.Error("after stop, a worker was handed out or kept")
	}
}
