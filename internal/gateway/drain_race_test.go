package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/testnet"
)

// TestReloadDuringDrain: a Reload racing the start of the drain either
// completes before it (and its new listener is closed by the drain) or is
// refused; it never adds a listener after the drain closed them, which
// left an accept loop that kept Serve from ever returning.
//
// g.mu is held only to park Reload right after its draining check, the
// moment the race was lost in.
func TestReloadDuringDrain(t *testing.T) {
	parse := func(text string) *State {
		cfg, err := config.Parse("t.yaml", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		pol, _ := cfg.Compile()
		return &State{Config: cfg, Policy: pol}
	}
	st := parse("listeners:\n  - {name: a, mode: sni, address: \"127.0.0.1:0\", upstream_port: 443}\npolicy: {default: deny}\n")
	g := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), accesslog.New(&testnet.Buffer{}, "json"))
	ctx, cancel := context.WithCancel(context.Background())
	if err := g.Bind(ctx); err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { g.Serve(ctx, 200*time.Millisecond); close(served) }()
	time.Sleep(50 * time.Millisecond)

	free, _ := net.Listen("tcp", "127.0.0.1:0")
	port := free.Addr().(*net.TCPAddr).Port
	free.Close()
	st2 := parse(fmt.Sprintf("listeners:\n  - {name: a, mode: sni, address: \"127.0.0.1:0\", upstream_port: 443}\n  - {name: b, mode: sni, address: \"127.0.0.1:%d\", upstream_port: 443}\npolicy: {default: deny}\n", port))

	g.mu.Lock()
	reloaded := make(chan error, 1)
	go func() { _, err := g.Reload(st2); reloaded <- err }()
	time.Sleep(50 * time.Millisecond) // Reload is past its draining check, waiting for g.mu
	cancel()                          // SIGTERM: Serve starts draining, waits for g.mu in closeListeners
	time.Sleep(50 * time.Millisecond)
	g.mu.Unlock()
	t.Logf("Reload returned %v", <-reloaded)

	select {
	case <-served:
		t.Log("Serve returned")
	case <-time.After(3 * time.Second):
		g.Abort()
		select {
		case <-served:
		case <-time.After(2 * time.Second):
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err == nil {
				c.Close()
			}
			t.Errorf("Serve has not returned 5 s after the drain began (grace 200ms, Abort called); the listener added by the racing Reload still accepts: dial err=%v", err)
			// leak: close it so the test binary can exit
			g.mu.Lock()
			for _, bl := range g.listeners {
				bl.close()
			}
			g.mu.Unlock()
		}
	}
}
