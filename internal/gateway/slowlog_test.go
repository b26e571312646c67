package gateway

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// TestSlowLogDoesNotStallRelays: a connection's log line is written after
// its relay ends. With the log writer stuck (a collector that stopped
// reading), the connections still open keep moving bytes; the stuck line
// is written once the writer moves again. The relay loops are shared by
// many connections, so a line written on a loop would stall them all.
func TestSlowLogDoesNotStallRelays(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	// Several connections, made one after another, spread over the loops:
	// at least one of the others shares a loop with the first.
	var conns []io.ReadWriteCloser
	for range 4 {
		c, _, err := dialTLS(w, "good.test")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	first, raw, err := dialTLS(w, "good.test")
	if err != nil {
		t.Fatal(err)
	}
	echo := func(c io.ReadWriter, msg []byte) error {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("echo returned %q, want %q", got, msg)
		}
		return nil
	}
	if err := echo(first, []byte("before")); err != nil {
		t.Fatal(err)
	}

	release := w.logs.Stall()
	first.Close() // its relay ends; its line waits for the writer
	deadline := time.Now().Add(10 * time.Second)
	for w.logs.Writing() == 0 {
		if time.Now().After(deadline) {
			release()
			t.Fatal("the closed connection's line was never written")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i, c := range conns {
		if err := echo(c, []byte("while the log is stuck")); err != nil {
			release()
			t.Fatalf("connection %d stalled while the log writer was stuck: %v", i, err)
		}
	}
	// The next line to end waits in the queue, and the gauge shows it.
	conns[0].Close()
	for queued := 0.0; queued != 1; {
		if time.Now().After(deadline) {
			release()
			t.Fatalf("egressd_access_log_queue = %v with one line waiting, want 1", queued)
		}
		time.Sleep(5 * time.Millisecond)
		queued = value(scrape(t, w.gw), "egressd_access_log_queue", nil)
	}
	release()
	w.waitLog(bySrcPort(raw))
	for _, c := range conns {
		c.Close()
	}
}
