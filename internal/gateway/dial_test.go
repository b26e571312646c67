package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/policy"
	"github.com/egressd/egressd/internal/testnet"
)

// fallbackPolicy is basePolicy with rules that tell two loopback answers of
// one name apart: 127.0.0.1 is denied for fenced.good.test, and allowed by
// another rule than 127.0.0.2 for split.good.test.
const fallbackPolicy = `policy:
  default: deny
  rules:
    - {name: fence, action: deny, fqdn: ["fenced.good.test"], destinations: ["127.0.0.1/32"]}
    - {name: other, action: allow, fqdn: ["split.good.test"], destinations: ["127.0.0.1/32"]}
    - {name: good, action: allow, fqdn: ["good.test", "*.good.test"], destinations: ["127.0.0.0/8"]}
`

// fallbackRecords give names whose first answer refuses connections: the
// echo server listens on 127.0.0.1 only, so its port on 127.0.0.2 is closed.
var fallbackRecords = records{
	"two.good.test":    {"127.0.0.2", "127.0.0.1"},
	"fenced.good.test": {"127.0.0.2", "127.0.0.1"},
	"split.good.test":  {"127.0.0.2", "127.0.0.1"},
	"dead.good.test":   {"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.1"},
}

// TestDialFallsBackToNextAnswer: a name whose first answer refuses is
// relayed to its next answer, and the log names both.
func TestDialFallsBackToNextAnswer(t *testing.T) {
	w := newWorld(t, fallbackRecords, fallbackPolicy)
	c, raw, err := dialTLS(w, "two.good.test")
	if err != nil {
		t.Fatalf("handshake through egressd: %v", err)
	}
	if got := <-w.serverCh; got != "two.good.test" {
		t.Errorf("server saw SNI %q", got)
	}
	echo(t, c, []byte("after a refused first answer"))
	c.Close()
	e := w.waitLog(bySrcPort(raw))
	first := fmt.Sprintf("127.0.0.2:%d", w.echo.Port())
	w.want(e, map[string]any{"action": "allow", "rule": "good", "dst": w.echo.String()})
	if r, _ := e["reason"].(string); !strings.Contains(r, first+" failed (connection refused), trying the next answer "+w.echo.String()) {
		t.Errorf("log reason = %q, want it to name the refused first answer", r)
	}
}

// TestDialFallbackKeepsPolicy: an answer the policy decides otherwise is
// never dialled, and no more than maxDialAttempts addresses are tried.
func TestDialFallbackKeepsPolicy(t *testing.T) {
	w := newWorld(t, fallbackRecords, fallbackPolicy)
	for _, tc := range []struct {
		sni   string
		tried []string // the failed addresses the reason names, in order
		not   string   // an address it must not name
	}{
		// 127.0.0.1 listens, but rule fence denies it for this name.
		{"fenced.good.test", []string{"127.0.0.2"}, "127.0.0.1"},
		// 127.0.0.1 is allowed too, but by rule other: not alike.
		{"split.good.test", []string{"127.0.0.2"}, "127.0.0.1"},
		// Three refused answers, then 127.0.0.1, which listens: past the cap.
		{"dead.good.test", []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}, "127.0.0.1"},
	} {
		t.Run(tc.sni, func(t *testing.T) {
			_, raw, err := dialTLS(w, tc.sni)
			if err == nil || !strings.Contains(err.Error(), "internal error") {
				t.Errorf("handshake = %v, want an internal_error alert", err)
			}
			raw.Close()
			e := w.waitLog(bySrcPort(raw))
			w.want(e, map[string]any{"action": "allow", "rule": "good"})
			r, _ := e["reason"].(string)
			rest := r
			for _, a := range tc.tried {
				i := strings.Index(rest, a)
				if i < 0 {
					t.Fatalf("log reason = %q, want it to name %s, in order %v", r, a, tc.tried)
				}
				rest = rest[i+len(a):]
			}
			if !strings.Contains(r, "upstream failed") || strings.Contains(r, tc.not) {
				t.Errorf("log reason = %q, want a failed dial that never names %s", r, tc.not)
			}
		})
	}
	w.noServerConn("it must not")
}

// TestExplicitFallsBackToNextAnswer: an explicit proxy's CONNECT and SOCKS5
// tunnels and its plain-HTTP forwarding go to the next answer too.
func TestExplicitFallsBackToNextAnswer(t *testing.T) {
	w := &world{t: t, serverCh: make(chan string, 64)}
	w.echo = w.startEcho()
	plain := startHTTP(t, "127.0.0.1:0", false)
	s := serveConfig(t, fmt.Sprintf(`listeners:
  - {name: proxy, mode: explicit, address: 127.0.0.1:0}
resolver: %s
timeouts: %s
%s`, testnet.DNS(t, fallbackRecords), defaultWorldTimeouts, fallbackPolicy), time.Second)
	w.gw, w.logs, w.cancel, w.served = s.Gateway, s.logs, s.cancel, s.done
	proxy := w.gw.Addrs()["proxy"]

	raw, err := net.Dial("tcp", proxy.String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(raw, "CONNECT two.good.test:%d HTTP/1.1\r\nHost: two.good.test:%d\r\n\r\n", w.echo.Port(), w.echo.Port())
	br := bufio.NewReader(raw)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT answer = %v, %v; want 200", resp, err)
	}
	c := tls.Client(raw, &tls.Config{ServerName: "two.good.test", InsecureSkipVerify: true})
	echo(t, c, []byte("through a tunnel to the second answer"))
	c.Close()
	e := w.waitLog(bySrcPort(raw))
	w.want(e, map[string]any{"action": "allow", "rule": "good", "dst": w.echo.String()})
	if r, _ := e["reason"].(string); !strings.Contains(r, fmt.Sprintf("127.0.0.2:%d failed", w.echo.Port())) {
		t.Errorf("tunnel log reason = %q, want it to name the refused first answer", r)
	}

	res, err := client(t, "http://"+proxy.String()).Get(fmt.Sprintf("http://two.good.test:%d/p", plain.Port()))
	if err != nil {
		t.Fatalf("GET through the proxy: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), "path=/p") {
		t.Fatalf("GET answer = %d %q, want the server's 200", res.StatusCode, body)
	}
	e = w.waitLog(func(e entry) bool { return e["dst"] == plain.String() })
	if r, _ := e["reason"].(string); !strings.Contains(r, fmt.Sprintf("127.0.0.2:%d failed", plain.Port())) {
		t.Errorf("forward log reason = %q, want it to name the refused first answer", r)
	}

	// SOCKS5 with the name (Go's client lets the proxy resolve it).
	res, err = client(t, "socks5://"+proxy.String()).Get(fmt.Sprintf("http://two.good.test:%d/s", plain.Port()))
	if err != nil {
		t.Fatalf("GET through SOCKS5: %v", err)
	}
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), "path=/s") {
		t.Fatalf("GET through SOCKS5 = %d %q, want the server's 200", res.StatusCode, body)
	}
	e = w.waitLog(func(e entry) bool { return e["dst"] == plain.String() && e["fqdn_source"] == "socks" })
	if r, _ := e["reason"].(string); !strings.Contains(r, fmt.Sprintf("127.0.0.2:%d failed", plain.Port())) {
		t.Errorf("SOCKS5 log reason = %q, want it to name the refused first answer", r)
	}
}

// TestDialVerdictBudget: the attempts share one connect timeout, a failed
// attempt leaves its share to the next, only answers the policy decides
// alike count, and a cancelled context ends the fallback. The dial function
// is a stand-in here: what is tested is the budget, not a socket (the tests
// above dial real ones).
func TestDialVerdictBudget(t *testing.T) {
	a := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}) }
	// 192.0.2.2 is denied for x.test: the policy tells it apart from the others.
	pol, err := policy.Compile([]policy.Rule{
		{Name: "fence", Action: policy.Deny, FQDN: []string{"x.test"}, Destinations: []netip.Prefix{netip.PrefixFrom(a(2), 32)}},
		{Name: "all", Action: policy.Allow, FQDN: []string{"x.test"}},
	}, policy.Deny)
	if err != nil {
		t.Fatal(err)
	}
	newVerdict := func(answers ...netip.Addr) verdict {
		in := policy.Input{FQDN: "x.test", Port: 443, Dst: answers[0]}
		return verdict{Decision: pol.Decide(in), dst: netip.AddrPortFrom(answers[0], 443), answers: answers, in: in, pol: pol}
	}
	// attempts dials v with a stand-in that fails every address with its
	// own error, and returns the shares and addresses it was given.
	attempts := func(ctx context.Context, v *verdict, timeout time.Duration) (shares []time.Duration, dialled []netip.Addr, err error) {
		_, err = dialVerdict(ctx, v, timeout, func(_ context.Context, dst netip.AddrPort, d time.Duration) (int, error) {
			shares, dialled = append(shares, d), append(dialled, dst.Addr())
			return 0, fmt.Errorf("refused %s", dst)
		})
		return shares, dialled, err
	}

	t.Run("shares", func(t *testing.T) {
		// An hour: no pause of a loaded machine between two attempts comes
		// near the margins compared here.
		const timeout = time.Hour
		v := newVerdict(a(1), a(2), a(3), a(4), a(5))
		got, dialled, err := attempts(context.Background(), &v, timeout)
		if want := []netip.Addr{a(1), a(3), a(4)}; !slices.Equal(dialled, want) {
			t.Errorf("dialled %v, want %v: the denied 192.0.2.2 skipped, %d in all", dialled, want, maxDialAttempts)
		}
		if err == nil || err.Error() != "refused 192.0.2.1:443" {
			t.Errorf("err = %v, want the first address's", err)
		}
		if len(got) != 3 || got[0] > timeout/3 || got[1] <= got[0] || got[2] <= got[1] || got[2] > timeout {
			t.Errorf("shares %v: want the first at most a third, each next one larger (it inherits the failed one's), none over the timeout", got)
		}
		if v.dst.Addr() != a(4) {
			t.Errorf("v.dst = %v, want the last address tried", v.dst)
		}
	})
	t.Run("floor", func(t *testing.T) {
		// A third of 5 s is under minDialShare: the first attempt gets 2 s.
		v := newVerdict(a(1), a(3), a(4))
		got, _, _ := attempts(context.Background(), &v, 5*time.Second)
		if len(got) == 0 || got[0] != minDialShare {
			t.Errorf("shares %v, want the first to be %v", got, minDialShare)
		}
	})
	t.Run("no alternative alike", func(t *testing.T) {
		// The second answer is denied: the first gets the whole timeout.
		v := newVerdict(a(1), a(2))
		got, _, _ := attempts(context.Background(), &v, time.Hour)
		if len(got) != 1 || got[0] != time.Hour {
			t.Errorf("shares %v, want one attempt with the whole timeout", got)
		}
	})
	t.Run("one answer", func(t *testing.T) {
		v := newVerdict(a(1))
		got, _, _ := attempts(context.Background(), &v, time.Hour)
		if len(got) != 1 || got[0] != time.Hour {
			t.Errorf("shares %v, want one attempt with the whole timeout", got)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		v := newVerdict(a(1), a(3), a(4))
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		dialVerdict(ctx, &v, time.Hour, func(context.Context, netip.AddrPort, time.Duration) (int, error) {
			n++
			cancel()
			return 0, context.Canceled
		})
		if n != 1 {
			t.Errorf("%d attempts after the context was cancelled in the first, want 1", n)
		}
	})
}
