package admin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/metrics"
)

func TestEndpoints(t *testing.T) {
	for _, pp := range []bool{false, true} {
		var ready atomic.Bool
		m := metrics.New(metrics.Gauges{})
		s, err := Listen(context.Background(), Options{
			Address: netip.MustParseAddrPort("127.0.0.1:0"), PProf: pp, Registry: m.Registry,
			Ready: func() (bool, string) {
				if ready.Load() {
					return true, "ready"
				}
				return false, "draining"
			},
			Log: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve()
		defer s.Shutdown(context.Background())
		base := "http://" + s.Addr().String()
		get := func(path string) (int, string) {
			resp, err := http.Get(base + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		pprofWant := http.StatusNotFound
		if pp {
			pprofWant = http.StatusOK
		}
		tests := []struct {
			path  string
			ready bool
			code  int
			body  string
		}{
			{"/healthz", false, 200, "ok\n"},
			{"/readyz", false, 503, "draining\n"},
			{"/readyz", true, 200, "ready\n"},
			{"/debug/pprof/", true, pprofWant, ""},
			{"/nothing", true, 404, ""},
		}
		for _, tt := range tests {
			ready.Store(tt.ready)
			code, body := get(tt.path)
			if code != tt.code || tt.body != "" && body != tt.body {
				t.Errorf("pprof %v: GET %s = %d %q, want %d %q", pp, tt.path, code, body, tt.code, tt.body)
			}
		}
	}
}

// TestIPv4AddressIsIPv4Only: an admin endpoint on 0.0.0.0 must not answer
// over IPv6 (Go's default would bind [::] with IPV6_V6ONLY off).
func TestIPv4AddressIsIPv4Only(t *testing.T) {
	m := metrics.New(metrics.Gauges{})
	s, err := Listen(context.Background(), Options{
		Address: netip.MustParseAddrPort("0.0.0.0:0"), Registry: m.Registry,
		Ready: func() (bool, string) { return true, "ready" }, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	defer s.Shutdown(context.Background())
	port := strconv.Itoa(int(s.Addr().Port()))
	if c, err := net.Dial("tcp", net.JoinHostPort("::1", port)); err == nil {
		c.Close()
		t.Errorf("the admin endpoint on 0.0.0.0 answers on [::1]")
	}
	if resp, err := http.Get("http://" + net.JoinHostPort("127.0.0.1", port) + "/healthz"); err != nil {
		t.Errorf("over IPv4: %v", err)
	} else {
		resp.Body.Close()
	}
}

// TestConnectionCaps: one source that opens admin connections and keeps
// them (a workload in a cluster where the endpoint listens on the pod's
// address) holds at most maxPerSource of them; the next is closed at once,
// while another source (a probe, a scraper) is still answered, and a
// place given back is taken again. Without a cap, such a client took the
// gateway's file descriptors, which its relays need.
func TestConnectionCaps(t *testing.T) {
	m := metrics.New(metrics.Gauges{})
	s, err := Listen(context.Background(), Options{
		Address: netip.MustParseAddrPort("127.0.0.1:0"), Registry: m.Registry,
		Ready: func() (bool, string) { return true, "ready" }, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	defer s.Shutdown(context.Background())
	addr := s.Addr().String()
	// healthz asks over c and reports whether it was answered.
	healthz := func(c net.Conn) bool {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return false
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	from := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var held []net.Conn
	for i := range maxPerSource {
		c := from("127.0.0.1")
		if !healthz(c) {
			t.Fatalf("connection %d of one source was not answered", i+1)
		}
		held = append(held, c) // kept alive, idle
	}
	if healthz(from("127.0.0.1")) {
		t.Errorf("source 127.0.0.1 was answered on connection %d; want it closed past %d", maxPerSource+1, maxPerSource)
	}
	if !healthz(from("127.0.0.2")) {
		t.Errorf("another source was not answered while the first held its share")
	}
	held[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for !healthz(from("127.0.0.1")) {
		if time.Now().After(deadline) {
			t.Fatal("a place given back was never taken again")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Many sources holding their share each: the last places stay for
	// sources that hold none (a probe). Held now: 127.0.0.1's 8 and one
	// of 127.0.0.2; 6 more sources, 47 connections, bring it to
	// maxConns-reserved (56).
	for s := range 6 {
		for range min(maxPerSource, maxConns-reserved-9-s*maxPerSource) {
			if c := from(fmt.Sprintf("127.0.1.%d", s+1)); !healthz(c) {
				t.Fatalf("source 127.0.1.%d refused within its share with places left", s+1)
			}
		}
	}
	if healthz(from("127.0.0.2")) {
		t.Error("a source holding a place took one of the last places")
	}
	if !healthz(from("127.0.0.3")) {
		t.Error("a source holding none (a probe) was refused with reserved places left")
	}
}
