package gateway

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/testnet"
)

// TestForwardIdleIsIdle: a plain-HTTP response that keeps streaming (a
// byte every 200 ms) passes through an explicit listener with idle: 1s:
// idle bounds the time with no byte moved, not the whole response.
func TestForwardIdleIsIdle(t *testing.T) {
	up := testnet.Listen(t)
	testnet.Serve(t, up, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n")
		for range 15 {
			time.Sleep(200 * time.Millisecond)
			c.Write([]byte("x"))
		}
	})
	g := loopbackProxy(t, "1s")

	c, err := net.Dial("tcp", g.Addrs()["proxy"].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", up.Addr(), up.Addr())
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || len(body) != 15 {
		t.Errorf("streaming response (never idle 1s) through the proxy: got %d of 15 bytes, err %v", len(body), err)
	}
}

// TestForwardUploadIdleIsIdle: a plain-HTTP request body that keeps
// streaming (a chunk every 200 ms, for longer than idle: 1s in all) reaches
// the server whole: idle bounds the time with no byte moved, on the way up
// as on the way down.
func TestForwardUploadIdleIsIdle(t *testing.T) {
	up := testnet.Listen(t)
	got := make(chan int, 1)
	testnet.Serve(t, up, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			got <- -1
			return
		}
		n, _ := io.Copy(io.Discard, req.Body)
		got <- int(n)
		io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
	})
	g := loopbackProxy(t, "1s")

	c, err := net.Dial("tcp", g.Addrs()["proxy"].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "POST http://%s/ HTTP/1.1\r\nHost: %s\r\nContent-Length: 15\r\n\r\n", up.Addr(), up.Addr())
	for range 15 {
		time.Sleep(200 * time.Millisecond)
		c.Write([]byte("x"))
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Errorf("streaming upload (never idle 1s) through the proxy: response %v, err %v", resp, err)
	}
	select {
	case n := <-got:
		if n != 15 {
			t.Errorf("the server read %d of the 15 body bytes", n)
		}
	case <-time.After(5 * time.Second):
		t.Error("the server never finished reading the body")
	}
}

// TestAbortEndsForwardedRequest: the end of a drain closes a plain-HTTP
// request's upstream connection too, so a server that never answers does
// not hold egressd's exit until the idle timeout.
func TestAbortEndsForwardedRequest(t *testing.T) {
	silent := testnet.Listen(t)
	testnet.Serve(t, silent, func(c net.Conn) { io.Copy(io.Discard, c) }) // reads, never answers
	g := loopbackProxy(t, "60s")

	c, err := net.Dial("tcp", g.Addrs()["proxy"].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", silent.Addr(), silent.Addr())
	time.Sleep(300 * time.Millisecond) // forwarded, waiting for the response

	start := time.Now()
	g.cancel()
	g.Abort()
	<-g.done
	// Generous: without the upstream tracked, Serve waits for the 60 s
	// idle deadline; with it, milliseconds.
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Serve returned %v after drain+Abort (grace 100ms); it waited for the upstream's idle deadline", d.Round(time.Millisecond))
	}
}

// loopbackProxy serves an explicit listener that allows loopback
// destinations, with the given idle timeout.
func loopbackProxy(t *testing.T, idle string) *served {
	return serveConfig(t, `listeners:
  - {name: proxy, mode: explicit, address: "127.0.0.1:0"}
timeouts: {first_bytes: 200ms, client_hello: 2s, connect: 2s, idle: `+idle+`}
policy:
  default: deny
  rules:
    - {name: lo, action: allow, destinations: ["127.0.0.0/8"]}
`, 100*time.Millisecond)
}

// TestReloadDecidesKeptAliveRequests: each request on a kept-alive proxy
// connection is decided, and its credentials checked, under the config
// that runs when it comes, not the one the connection was accepted under:
// a reload that denies the destination, or removes the user, holds for
// the connection's next request.
func TestReloadDecidesKeptAliveRequests(t *testing.T) {
	up := testnet.Listen(t)
	testnet.Serve(t, up, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	const head = `listeners:
  - {name: proxy, mode: explicit, address: "127.0.0.1:0"}
timeouts: {first_bytes: 200ms, client_hello: 2s, connect: 2s, idle: 1m}
`
	bob := `users: [{name: bob, password_hash: "` + s3cretHash + `"}]` + "\n"
	alice := `users: [{name: alice, password_hash: "` + s3cretHash + `"}]` + "\n"
	const allow = "policy: {default: deny, rules: [{name: lo, action: allow, destinations: [127.0.0.0/8]}]}\n"
	const deny = "policy: {default: deny, rules: [{name: no-lo, action: deny, destinations: [127.0.0.0/8]}]}\n"
	for _, tc := range []struct {
		name, before, after string
		want                int
	}{
		{"destination denied", bob + allow, bob + deny, http.StatusForbidden},
		{"user removed", bob + allow, alice + allow, http.StatusProxyAuthRequired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := serveConfig(t, head+tc.before, 100*time.Millisecond)
			c, err := net.Dial("tcp", g.Addrs()["proxy"].String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			ask := func() int {
				fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n",
					up.Addr(), up.Addr(), base64.StdEncoding.EncodeToString([]byte("bob:s3cret")))
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				return resp.StatusCode
			}
			if code := ask(); code != http.StatusOK {
				t.Fatalf("before the reload: %d", code)
			}
			cfg, err := config.Parse("test.yaml", []byte(head+tc.after))
			if err != nil {
				t.Fatal(err)
			}
			pol, _ := cfg.Compile()
			if restart, err := g.Reload(&State{Config: cfg, Policy: pol}); err != nil || len(restart) > 0 {
				t.Fatalf("Reload = %v, %v", restart, err)
			}
			if code := ask(); code != tc.want {
				t.Errorf("the kept-alive connection's next request after the reload: %d, want %d", code, tc.want)
			}
		})
	}
}

// TestReloadListenerForKeptAliveRequests: the next request on a kept-alive
// plain-HTTP connection of an sni listener is served under the listener's
// options as a reload left them (here upstream_port), as it is decided
// under the new policy.
func TestReloadListenerForKeptAliveRequests(t *testing.T) {
	serve := func(name string) netip.AddrPort {
		ln := testnet.Listen(t)
		testnet.Serve(t, ln, func(c net.Conn) {
			br := bufio.NewReader(c)
			for {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"+name)
			}
		})
		return netip.MustParseAddrPort(ln.Addr().String())
	}
	a, b := serve("a"), serve("b")
	w := newWorldTo(t, baseRecords, basePolicy, a.Port())
	c := dialListener(t, w)
	br := bufio.NewReader(c)
	ask := func() string {
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: good.test\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	if got := ask(); got != "a" {
		t.Fatalf("before the reload: served by %q", got)
	}
	old := w.gw.State().Config
	// The same address as written (127.0.0.1:0): the listener keeps its
	// socket and takes the new options.
	cfg, err := config.Parse("test.yaml", []byte(fmt.Sprintf("listeners:\n  - {name: sni, mode: sni, address: 127.0.0.1:0, upstream_port: %d}\nresolver: %s\n%s", b.Port(), old.Resolver, basePolicy)))
	if err != nil {
		t.Fatal(err)
	}
	pol, _ := cfg.Compile()
	if _, err := w.gw.Reload(&State{Config: cfg, Policy: pol}); err != nil {
		t.Fatal(err)
	}
	if got := ask(); got != "b" {
		t.Errorf("the kept-alive connection's next request after the reload was served by %q, want the new upstream_port's %q", got, "b")
	}
}
