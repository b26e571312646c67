package gateway

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/egressd/egressd/internal/testnet"
)

// The evasion tests feed the sni listener the ClientHellos a client that
// wants past a deny rule would try, and check each is decided as docs/policy.md
// documents: on the first hello, on the normalised name, and never in a way
// that lets a denied name reach a server.

// goHelloBytes returns the first flight of a real crypto/tls client (Go's
// default post-quantum hello, larger than one packet) for sni.
func goHelloBytes(t *testing.T, sni string) []byte { return helloFor(t, sni) }

// handshakeMsg is the ClientHello handshake message inside a one-record
// hello, for reframing.
func handshakeMsg(rec []byte) []byte { return rec[5:] }

// reframe frames msg into TLS handshake records of at most size bytes.
func reframe(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, 0x16, 0x03, 0x01, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// craftedHello builds a minimal TLS 1.2-style ClientHello record whose
// server_name extension holds the given host_name entries verbatim (none:
// no extension). crypto/tls clients cannot be made to send these.
func craftedHello(names ...string) []byte {
	var b cryptobyte.Builder
	b.AddUint8(0x16)
	b.AddUint16(0x0301)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint8(1) // client_hello
		b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint16(0x0303)
			b.AddBytes(make([]byte, 32))                                                   // random
			b.AddUint8(0)                                                                  // session id
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(0xc02f) }) // suites
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })        // compression
			if len(names) == 0 {
				return
			}
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16(0) // server_name
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
						for _, n := range names {
							b.AddUint8(0) // host_name
							b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(n)) })
						}
					})
				})
			})
		})
	})
	return b.BytesOrPanic()
}

// outcome is what a client saw after sending its first bytes.
type outcome int

const (
	gotServerRecord outcome = iota // a handshake record from the server: relayed
	gotAlert                       // a TLS alert record
	gotClose                       // EOF or reset with no byte
	// relayedAny: the server must see the hello; what it answers a
	// crafted hello (usually its own handshake_failure alert) is its business.
	relayedAny
	// gotServerAlert: a decode_error alert, which egressd never sends: the
	// server got the hello and refused it.
	gotServerAlert
)

func (o outcome) String() string {
	return [...]string{"server handshake record", "TLS alert", "close", "relayed", "server alert"}[o]
}

// send writes parts with a short pause between them (so that they reach
// egressd as separate segments) and reports what came back first.
func send(t *testing.T, addr netip.AddrPort, parts ...[]byte) (outcome, byte, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for i, p := range parts {
		if i > 0 {
			time.Sleep(time.Millisecond)
		}
		if _, err := c.Write(p); err != nil {
			break // egressd may already have refused
		}
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [7]byte
	n, err := io.ReadAtLeast(c, hdr[:], 1)
	if n == 0 {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("no answer and no close within 10s")
		}
		return gotClose, 0, c
	}
	switch hdr[0] {
	case 0x16:
		return gotServerRecord, 0, c
	case 0x15:
		io.ReadFull(c, hdr[n:])
		return gotAlert, hdr[6], c
	}
	t.Fatalf("unexpected first byte %#x from egressd", hdr[0])
	return 0, 0, c
}

// TestEvasionSplitHello splits real hellos at every byte boundary and
// reframes them into 1-byte TLS records: an allowed name is relayed and a
// denied one refused with access_denied, every time.
func TestEvasionSplitHello(t *testing.T) {
	w := newWorld(t, baseRecords, basePolicy)
	go func() { // the echo server reports every SNI; nobody reads them here
		for range w.serverCh {
		}
	}()
	for _, tc := range []struct {
		sni  string
		want outcome
	}{
		{"good.test", gotServerRecord},
		{"x.ads.test", gotAlert},
	} {
		rec := goHelloBytes(t, tc.sni)
		t.Run(tc.sni+"/every-split", func(t *testing.T) {
			var bad atomic.Int32
			var wg sync.WaitGroup
			splits := make(chan int)
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range splits {
						if got, _, c := send(t, w.addr, rec[:i], rec[i:]); got != tc.want {
							bad.Add(1)
							t.Errorf("split at byte %d: %v, want %v", i, got, tc.want)
						} else {
							c.Close()
						}
					}
				}()
			}
			for i := 1; i < len(rec); i++ {
				splits <- i
			}
			close(splits)
			wg.Wait()
			t.Logf("%d split points of a %d-byte hello, %d wrong", len(rec)-1, len(rec), bad.Load())
		})
		t.Run(tc.sni+"/1-byte-records", func(t *testing.T) {
			one := reframe(handshakeMsg(rec), 1)
			if got, _, _ := send(t, w.addr, one); got != tc.want {
				t.Errorf("hello in %d one-byte records: %v, want %v", len(handshakeMsg(rec)), got, tc.want)
			}
			// and the same records trickled in 64 writes
			var parts [][]byte
			for b := one; len(b) > 0; b = b[min(len(b), 150):] {
				parts = append(parts, b[:min(len(b), 150)])
			}
			if got, _, _ := send(t, w.addr, parts...); got != tc.want {
				t.Errorf("one-byte records in %d writes: %v, want %v", len(parts), got, tc.want)
			}
		})
	}
}

// TestEvasionHelloContents covers hellos whose server name is odd or whose
// framing is broken. Allowed cases must reach the server with the name the
// log shows; nothing else may reach it.
func TestEvasionHelloContents(t *testing.T) {
	rec := records{"xn--bcher-kva.good.test": {"127.0.0.1"}}
	for k, v := range baseRecords {
		rec[k] = v
	}
	w := newWorld(t, rec, basePolicy)
	long := strings.Repeat("a.", 125) + "good.test" // 259 bytes: over the 253 an FQDN may have
	good := goHelloBytes(t, "good.test")
	denied := goHelloBytes(t, "x.ads.test")
	for _, tc := range []struct {
		name   string
		bytes  []byte
		want   outcome
		action string // in the log
		fqdn   string // in the log, when relayed
		reason string // in the log, when refused
	}{
		{"uppercase", craftedHello("GOOD.TEST"), relayedAny, "allow", "good.test", ""},
		// crypto/tls servers refuse a trailing dot (RFC 6066 §3) with
		// decode_error: that alert, from the server, proves the relay.
		{"trailing dot", craftedHello("good.test."), gotServerAlert, "allow", "good.test", ""},
		{"uppercase denied", craftedHello("X.ADS.TEST"), gotAlert, "deny", "x.ads.test", `rule "ads"`},
		{"trailing dot denied", craftedHello("x.ads.test."), gotAlert, "deny", "x.ads.test", `rule "ads"`},
		{"non-ASCII is punycode", craftedHello("bücher.good.test"), relayedAny, "allow", "xn--bcher-kva.good.test", ""},
		{"NUL inside", craftedHello("x.ads.test\x00.good.test"), gotAlert, "deny", "", "is not a valid name"},
		{"NUL at end", craftedHello("good.test\x00"), gotAlert, "deny", "", "is not a valid name"},
		{"invalid UTF-8", craftedHello("good\xff.test"), gotAlert, "deny", "", "is not a valid name"},
		{"IP literal", craftedHello("127.0.0.1"), gotAlert, "deny", "", "no server name"},
		{"255+ bytes", craftedHello(long), gotAlert, "deny", "", "is not a valid name"},
		{"no server_name", craftedHello(), gotAlert, "deny", "", "no server name"},
		{"two names, allowed first", craftedHello("good.test", "x.ads.test"), gotClose, "deny", "", "malformed"},
		{"two names, denied first", craftedHello("x.ads.test", "good.test"), gotClose, "deny", "", "malformed"},
		{"SSLv2-style hello", append([]byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15}, make([]byte, 41)...), gotClose, "deny", "", ""},
		{"record length over 16 KiB", []byte{0x16, 0x03, 0x01, 0xff, 0xff, 0x01}, gotClose, "deny", "", "malformed"},
		{"empty record", []byte{0x16, 0x03, 0x01, 0x00, 0x00}, gotClose, "deny", "", "malformed"},
		{"hello longer than its record claims", append(bytes.Clone(good[:5]), append([]byte{0x01, 0xff, 0xff, 0xff}, good[9:]...)...), gotClose, "deny", "", "malformed"},
		{"not a client_hello", append([]byte{0x16, 0x03, 0x01, 0x00, 0x04, 0x02}, 0, 0, 0), gotClose, "deny", "", "malformed"},
		{"alert record first", []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00}, gotClose, "deny", "", ""},
		{"garbage after an allowed hello", append(bytes.Clone(good), "\x00garbage\xff"...), gotServerRecord, "allow", "good.test", ""},
		{"garbage after a denied hello", append(bytes.Clone(denied), "\x00garbage\xff"...), gotAlert, "deny", "x.ads.test", `rule "ads"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			drain(w.serverCh)
			got, alert, c := send(t, w.addr, tc.bytes)
			if tc.want == gotServerAlert && (got != gotAlert || alert != 50) {
				t.Fatalf("outcome %v (alert %d), want the server's decode_error alert", got, alert)
			}
			if tc.want != relayedAny && tc.want != gotServerAlert && got != tc.want {
				t.Fatalf("outcome %v, want %v", got, tc.want)
			}
			if tc.want == gotAlert && alert != 49 {
				t.Errorf("alert %d, want 49 (access_denied)", alert)
			}
			c.Close()
			e := w.waitLog(bySrcPort(c))
			w.want(e, map[string]any{"action": tc.action, "fqdn": tc.fqdn})
			if r, _ := e["reason"].(string); !strings.Contains(r, tc.reason) {
				t.Errorf("log reason %q, want it to contain %q", r, tc.reason)
			}
			if tc.want == gotServerRecord || tc.want == relayedAny {
				select {
				case sni := <-w.serverCh:
					if n, _ := strings.CutSuffix(strings.ToLower(sni), "."); n != tc.fqdn && tc.fqdn != "xn--bcher-kva.good.test" {
						t.Errorf("server saw SNI %q, log says %q", sni, tc.fqdn)
					}
				case <-time.After(10 * time.Second):
					t.Errorf("relayed, but the server saw no hello")
				}
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	if n := len(w.serverCh); n > 0 {
		t.Errorf("the server saw %d hellos it should not have", n)
	}
}

func drain(ch chan string) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// TestEvasionSecondHello: a second hello sent behind the first, before
// the server answered (no TLS client does that; a client forcing a
// HelloRetryRequest could, to have a lenient server act on it), is
// refused with access_denied, in one write with the first (nothing is
// dialled) or in a write of its own (the relay's watch). The server never
// reads it. TestSecondHelloNamesAnotherServer covers one sent after a real
// HelloRetryRequest.
func TestEvasionSecondHello(t *testing.T) {
	// A server that never answers, and reports how many bytes it read.
	ln := testnet.Listen(t)
	read := make(chan int, 4)
	testnet.Serve(t, ln, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		read <- int(n)
	})
	w := newWorldTo(t, baseRecords, basePolicy, uint16(ln.Addr().(*net.TCPAddr).Port))
	first := craftedHello("good.test")
	for _, together := range []bool{true, false} {
		c, err := net.Dial("tcp", w.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if together {
			c.Write(append(first, craftedHello("x.ads.test")...))
		} else {
			c.Write(first)
			time.Sleep(50 * time.Millisecond)
			c.Write(craftedHello("x.ads.test"))
		}
		rest, _ := io.ReadAll(c)
		if !isAccessDenied(rest) {
			t.Errorf("together=%v: client read %x, want an access_denied alert", together, rest)
		}
		e := w.waitLog(bySrcPort(c))
		w.want(e, map[string]any{"action": "deny", "fqdn": "good.test", "rule": ""})
		if reason, _ := e["reason"].(string); !strings.Contains(reason, "a handshake record before the server answered") {
			t.Errorf("together=%v: reason %q", together, reason)
		}
		if together {
			continue // nothing was dialled
		}
		select {
		case n := <-read:
			if n != len(first) {
				t.Errorf("the server read %d bytes, want the first hello's %d only", n, len(first))
			}
		case <-time.After(10 * time.Second):
			t.Error("the server's connection was not ended")
		}
	}
	select {
	case n := <-read:
		t.Errorf("a connection dialled for the hellos sent together (the server read %d bytes)", n)
	default:
	}
}

// TestHelloRetryRequest runs a real crypto/tls handshake that needs a
// HelloRetryRequest (the server accepts only P-256, the client's first
// hello offers X25519MLKEM768 and X25519 key shares) through egressd: the
// second hello passes untouched and the handshake completes.
func TestHelloRetryRequest(t *testing.T) {
	cert := selfSigned(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates:     []tls.Certificate{cert},
		CurvePreferences: []tls.CurveID{tls.CurveP256},
		MinVersion:       tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	testnet.Serve(t, ln, func(c net.Conn) { io.Copy(c, c) })
	w := newWorldTo(t, baseRecords, basePolicy, uint16(ln.Addr().(*net.TCPAddr).Port))
	c, raw, err := dialTLS(w, "good.test")
	if err != nil {
		t.Fatalf("handshake with HelloRetryRequest through egressd: %v", err)
	}
	if st := c.ConnectionState(); !st.HelloRetryRequest {
		t.Errorf("the server did not ask for a retry; the test proves nothing (curve %v)", st.CurveID)
	}
	fmt.Fprint(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Errorf("echo after HRR: %q %v", buf, err)
	}
	c.Close()
	e := w.waitLog(bySrcPort(raw))
	w.want(e, map[string]any{"action": "allow", "fqdn": "good.test"})
}
