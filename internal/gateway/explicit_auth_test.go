package gateway

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/authguard"
	"github.com/egressd/egressd/internal/socks5"
)

// TestExplicitAuthBruteForce: one source (127.0.0.2) sends 200 wrong
// passwords as fast as it can, half over HTTP and half over SOCKS5. Each
// would cost a bcrypt comparison (~65 ms of CPU); the guard hashes only
// the first few and refuses the rest unchecked, so the attack costs a
// bounded amount of CPU. Meanwhile 127.0.0.1 logs in with the right
// password, and even the right password from 127.0.0.2 is refused until its
// back-off ends.
func TestExplicitAuthBruteForce(t *testing.T) {
	w := newProxyWorld(t, `users:
  - {name: ci-runner, password_hash: "`+s3cretHash+`"}`, "", true)
	attacker, user := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")
	target := fmt.Sprintf("good.test:%d", w.https.Port())
	const attempts = 200
	var wg sync.WaitGroup
	refused := make(chan string, attempts)
	for i := range attempts {
		wg.Go(func() {
			if i%2 == 0 {
				refused <- httpConnectAs(t, attacker, w.proxy, target, "ci-runner", fmt.Sprintf("guess%d", i))
			} else {
				refused <- socksLoginAs(t, attacker, w.proxy, "ci-runner", fmt.Sprintf("guess%d", i))
			}
		})
	}
	// Another source logs in while the attack runs. A check refused as
	// busy (no slot within SlotWait, possible on a loaded machine) is
	// answered 407 like a wrong password; a client may try again.
	start := time.Now()
	got, tries := "", 0
	for tries < 3 && got != "200" {
		got = httpConnectAs(t, user, w.proxy, target, "ci-runner", "s3cret")
		tries++
	}
	took := time.Since(start)
	wg.Wait()
	close(refused)
	if got != "200" {
		t.Errorf("right password from another source during the attack: %s after %d tries, want 200", got, tries)
	}
	t.Logf("another source's CONNECT during the attack: %s after %v (%d tries)", got, took, tries)
	for got := range refused {
		if got != "407" && got != "socks failure" {
			t.Fatalf("wrong password answered %q, want 407 or the RFC 1929 failure status", got)
		}
	}

	mf := scrape(t, w.gw)
	count := func(result string) float64 {
		return value(mf, "egressd_auth_checks_total", map[string]string{"result": result})
	}
	hashed := count("ok") + count("wrong")
	// DefaultFailures wrong passwords start the back-off; attempts
	// already holding a check slot by then are hashed too (at most
	// GOMAXPROCS/2).
	bound := float64(authguard.DefaultFailures + runtime.GOMAXPROCS(0))
	// Those not hashed are refused unchecked: backing off, or busy when
	// they queued for a slot longer than SlotWait (a loaded machine).
	if unchecked := count("backoff") + count("busy"); hashed > bound || unchecked < attempts-bound {
		t.Errorf("%d wrong passwords from one source: %v hashed, %v refused unchecked (backoff), %v busy; want at most %v hashed, the rest unchecked",
			attempts, hashed, count("backoff"), count("busy"), bound)
	}
	t.Logf("%d attempts: %v hashed, %v backoff, %v busy", attempts, hashed, count("backoff"), count("busy"))

	if got := socksLoginAs(t, user, w.proxy, "ci-runner", "s3cret"); got != "socks ok" {
		t.Errorf("SOCKS5 right password from another source after the attack: %s, want success", got)
	}
	// The attacker's right password is refused unchecked: a brute force
	// learns nothing while it backs off. On a machine slow enough (the
	// race detector makes bcrypt ten times slower) nearly every attempt
	// above was refused as busy, which counts no failure, so the attacker
	// may not be backing off yet: one guess at a time, the failures that
	// start it.
	for range authguard.DefaultFailures {
		if mf = scrape(t, w.gw); count("backoff") > 0 {
			break
		}
		httpConnectAs(t, attacker, w.proxy, target, "ci-runner", "guess-again")
	}
	mf = scrape(t, w.gw)
	before := count("ok") + count("wrong")
	if got := httpConnectAs(t, attacker, w.proxy, target, "ci-runner", "s3cret"); got != "407" {
		t.Errorf("right password from the backing-off source: %s, want 407", got)
	}
	w.waitLog(matching(map[string]any{"reason": `http proxy: proxy authentication refused for user "ci-runner": too many failures from 127.0.0.2, backing off`}))
	mf = scrape(t, w.gw)
	if after := count("ok") + count("wrong"); after != before {
		t.Errorf("the backing-off source's right password was hashed (%v checks before, %v after)", before, after)
	}
}

// httpConnectAs sends a CONNECT with Basic credentials from src and
// returns the response's status code.
func httpConnectAs(t *testing.T, src netip.Addr, proxy netip.AddrPort, target, user, pass string) string {
	c := dialFrom(t, src, proxy)
	if c == nil {
		return "dial failed"
	}
	defer c.Close()
	cred := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\nProxy-Authorization: Basic %s\r\n\r\n", target, cred)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		return "error: " + err.Error()
	}
	resp.Body.Close()
	return fmt.Sprint(resp.StatusCode)
}

// socksLoginAs runs the SOCKS5 greeting and RFC 1929 exchange from src.
func socksLoginAs(t *testing.T, src netip.Addr, proxy netip.AddrPort, user, pass string) string {
	c := dialFrom(t, src, proxy)
	if c == nil {
		return "dial failed"
	}
	defer c.Close()
	msg := []byte{socks5.Version, 1, socks5.MethodUserPass, 1, byte(len(user))}
	msg = append(append(msg, user...), byte(len(pass)))
	msg = append(msg, pass...)
	c.Write(msg)
	var got [4]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return "error: " + err.Error()
	}
	switch got {
	case [4]byte{5, socks5.MethodUserPass, 1, 0}:
		return "socks ok"
	case [4]byte{5, socks5.MethodUserPass, 1, 1}:
		return "socks failure"
	}
	return fmt.Sprintf("unexpected %x", got)
}

func dialFrom(t *testing.T, src netip.Addr, to netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.TCPAddrFromAddrPort(to))
	if err != nil {
		t.Error(err)
		return nil
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

// TestExplicitAuthRightPasswordCached: a client that opens a connection
// per request with the right password has it checked (bcrypt) once, not
// on every connection: a right password never backs off, and checked each
// time, a client opening connections as fast as it can held the check
// slots every other user waits for. A wrong password is checked each time.
func TestExplicitAuthRightPasswordCached(t *testing.T) {
	w := newProxyWorld(t, `users:
  - {name: ci-runner, password_hash: "`+s3cretHash+`"}`, "", true)
	src := netip.MustParseAddr("127.0.0.3")
	target := fmt.Sprintf("good.test:%d", w.https.Port())
	for i := range 5 {
		if got := httpConnectAs(t, src, w.proxy, target, "ci-runner", "s3cret"); got != "200" {
			t.Fatalf("connection %d with the right password: %s", i+1, got)
		}
	}
	if got := socksLoginAs(t, src, w.proxy, "ci-runner", "s3cret"); got == "socks failure" {
		t.Fatalf("SOCKS5 login with the right password: %s", got)
	}
	if n := w.gw.rightPasswords.hashed.Load(); n != 1 {
		t.Errorf("six logins with one right password: %d bcrypt checks, want 1", n)
	}
	if c := w.gw.auth.Counts(); c.OK != 6 {
		t.Errorf("six logins with one right password: %d counted ok, want 6", c.OK)
	}
	for range 2 {
		httpConnectAs(t, src, w.proxy, target, "ci-runner", "wrong")
	}
	if c := w.gw.auth.Counts(); c.Wrong != 2 {
		t.Errorf("two wrong passwords: %d checked wrong, want 2", c.Wrong)
	}
}
