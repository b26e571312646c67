package gateway

import (
	"bytes"
	"strings"
	"testing"
)

// TestSetUpOnTheLoop checks that the sni listener's two ways of setting a
// connection up (inline.go) decide and relay alike: the first connection
// to a name, not cached yet, goes to a set-up goroutine; the second, a
// whole hello for a cached name, is set up by the relay loop; so is a
// hello split in two writes, whose rest the loop waits for (a
// post-quantum hello is two segments on most paths); a denied name is
// refused by the goroutine even once it is cached. Every one ends in the
// same log line.
func TestSetUpOnTheLoop(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	relayOnce := func(how string) {
		t.Helper()
		c, rc, err := dialTLS(w, "api.good.test")
		if err != nil {
			t.Fatalf("%s: handshake through egressd: %v", how, err)
		}
		if got := <-w.serverCh; got != "api.good.test" {
			t.Errorf("%s: server saw SNI %q", how, got)
		}
		echo(t, c, bytes.Repeat([]byte("x"), 100_000))
		c.Close()
		e := w.waitLog(bySrcPort(rc))
		w.want(e, map[string]any{"listener": "sni", "action": "allow", "rule": "good", "fqdn": "api.good.test",
			"fqdn_source": "sni", "protocol": "tls", "enforced": true, "dst": w.echo.String()})
	}
	relayOnce("not cached")
	w.gw.mu.Lock()
	raw := w.gw.listeners[0].raw
	w.gw.mu.Unlock()
	if raw == nil {
		t.Fatal("the sni listener is not accepted on a relay loop")
	}
	if n := w.gw.onLoop.Load(); n != 0 {
		t.Errorf("the loop set up %d connections before the name was cached, want 0", n)
	}
	relayOnce("cached")
	if n := w.gw.onLoop.Load(); n != 1 {
		t.Errorf("the loop set up %d connections, want 1 (the one with a cached name)", n)
	}

	// Split: the loop reads the first part, waits for the rest and sets
	// the connection up itself.
	rec := goHelloBytes(t, "api.good.test")
	go func() { <-w.serverCh }()
	got, _, c := send(t, w.addr, rec[:40], rec[40:])
	if got != gotServerRecord {
		t.Fatalf("split hello: %v, want the server's answer", got)
	}
	c.Close()
	if n := w.gw.onLoop.Load(); n != 2 {
		t.Errorf("after a split hello the loop set up %d connections, want 2", n)
	}

	// Denied, with its name's answers cached by an earlier deny's lookup.
	for range 2 {
		_, rc, err := dialTLS(w, "nodest.test")
		if err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("denied name: handshake error = %v, want a TLS access denied alert", err)
		}
		rc.Close()
		e := w.waitLog(bySrcPort(rc))
		w.want(e, map[string]any{"action": "deny", "rule": "nodest", "protocol": "tls", "enforced": true})
	}
	if n := w.gw.onLoop.Load(); n != 2 {
		t.Errorf("the loop set up %d connections, want still 2: it never refuses itself", n)
	}
	w.noServerConn("for a denied client")
}

// TestSetUpOnTheLoopDialFails checks a connect the loop started and saw
// refused: the set-up goroutine it hands over to counts it as its first
// attempt and refuses the client as relay does, with the same line, and
// the pending handshakes count comes back to zero.
func TestSetUpOnTheLoopDialFails(t *testing.T) {
	w := newWorldTo(t, baseRecords, basePolicy, closedPort(t))
	for _, how := range []string{"not cached", "cached: dialled by the loop"} {
		_, raw, err := dialTLS(w, "good.test")
		if err == nil || !strings.Contains(err.Error(), "internal error") {
			t.Errorf("%s: handshake = %v, want an internal_error alert", how, err)
		}
		raw.Close()
		e := w.waitLog(bySrcPort(raw))
		w.want(e, map[string]any{"action": "allow", "rule": "good", "protocol": "tls"})
		if r, _ := e["reason"].(string); !strings.Contains(r, "upstream failed") || !strings.Contains(r, "refused") {
			t.Errorf("%s: log reason = %q, want the dial error", how, r)
		}
	}
	if n := w.gw.onLoop.Load(); n != 0 {
		t.Errorf("the loop relayed %d connections to a closed port", n)
	}
	if n := w.gw.pending.Load(); n != 0 {
		t.Errorf("pending handshakes = %d after every client was answered, want 0", n)
	}
}
