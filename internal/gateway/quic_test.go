package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	iquic "github.com/egressd/egressd/internal/quic"
)

// syncBuffer is an io.Writer the access log and the test share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestQUICDecidedAsTLS: the UDP side of a transparent listener asks the
// gateway's own decision. On loopback without TPROXY a datagram's original
// destination is the listener itself, on 127.0.0.1, which destination
// safety refuses whatever the name: the QUIC client is refused in QUIC
// (CRYPTO_ERROR access_denied) and the line is the deny the TCP path
// writes, with protocol quic, the SNI and a QUIC JA4. (Relaying needs
// TPROXY: e2e/quic_test.go.)
func TestQUICDecidedAsTLS(t *testing.T) {
	cfg, err := config.Parse("quic.yaml", []byte(`listeners:
  - {name: t, mode: transparent, address: 127.0.0.1:0, tproxy: true, udp: true}
policy:
  default: deny
  rules:
    - {name: good, action: allow, fqdn: ["good.test"], protocols: [quic]}
`))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := cfg.Compile()
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	g := New(&State{Config: cfg, Policy: pol}, slog.New(slog.NewTextHandler(io.Discard, nil)), accesslog.New(&out, "json"))
	if err := g.Bind(context.Background()); err != nil {
		if strings.Contains(err.Error(), "CAP_NET_ADMIN") {
			t.Skipf("IP_TRANSPARENT needs CAP_NET_ADMIN: %v", err)
		}
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { g.Serve(ctx, time.Second); close(served) }()
	defer func() { stop(); <-served }()

	addr := g.UDPAddrs()["t"]
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = quic.DialAddr(dctx, addr.String(), &tls.Config{ServerName: "good.test", InsecureSkipVerify: true, NextProtos: []string{"h3"}}, nil)
	var te *quic.TransportError
	if !errors.As(err, &te) || !te.Remote || te.ErrorCode != iquic.CodeAccessDenied {
		t.Fatalf("dial good.test at the listener itself: %v; want the remote transport error 0x131", err)
	}
	var line map[string]any
	for deadline := time.Now().Add(5 * time.Second); line == nil && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if s := out.String(); s != "" {
			if err := json.Unmarshal([]byte(strings.SplitN(s, "\n", 2)[0]), &line); err != nil {
				t.Fatalf("log line %q: %v", s, err)
			}
		}
	}
	if line == nil {
		t.Fatal("no access-log line within 5s")
	}
	for k, want := range map[string]any{"listener": "t", "protocol": "quic", "fqdn": "good.test", "fqdn_source": "sni",
		"action": "deny", "enforced": true, "dst": addr.String(), "alpn": []any{"h3"}} {
		if got := line[k]; !equalJSON(got, want) {
			t.Errorf("log %s = %v, want %v (line %v)", k, got, want, line)
		}
	}
	if r, _ := line["reason"].(string); !strings.Contains(r, "destination 127.0.0.1 is restricted") {
		t.Errorf("reason %q; want destination safety's refusal", r)
	}
	if j, _ := line["ja4"].(string); !strings.HasPrefix(j, "q13d") {
		t.Errorf("ja4 %q; want a QUIC fingerprint (q13d...)", j)
	}
	if m := g.udpCounts(); m.Closes == 0 {
		t.Errorf("udpCounts() = %+v; want the close counted", m)
	}
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// TestQUICReload: a reload keeps the UDP side as it was bound and says
// when a change to it needs a restart.
func TestQUICReload(t *testing.T) {
	parse := func(udp string) *State {
		t.Helper()
		cfg, err := config.Parse("quic.yaml", []byte(`listeners:
  - {name: t, mode: transparent, address: 127.0.0.1:0, tproxy: true`+udp+`}
policy: {default: deny}
`))
		if err != nil {
			t.Fatal(err)
		}
		pol, err := cfg.Compile()
		if err != nil {
			t.Fatal(err)
		}
		return &State{Config: cfg, Policy: pol}
	}
	g := New(parse(", udp: true"), slog.New(slog.NewTextHandler(io.Discard, nil)), accesslog.New(io.Discard, "json"))
	if err := g.Bind(context.Background()); err != nil {
		if strings.Contains(err.Error(), "CAP_NET_ADMIN") {
			t.Skipf("IP_TRANSPARENT needs CAP_NET_ADMIN: %v", err)
		}
		t.Fatal(err)
	}
	defer g.closeListeners()
	for _, tc := range []struct {
		udp, want string
	}{
		{", udp: true, quic_deny: drop", ""},
		{"", "listener t: udp or its address changed"},
	} {
		restart, err := g.Reload(parse(tc.udp))
		got := strings.Join(restart, "\n")
		if err != nil || tc.want == "" && strings.Contains(got, "udp") || tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("Reload(%q) = %q, %v; want %q", tc.udp, restart, err, tc.want)
		}
		if tc.want == "" && !g.quicParams(g.udp[0]).Drop {
			t.Errorf("after Reload(%q), new flows do not take quic_deny: drop", tc.udp)
		}
	}
	if p := g.quicParams(g.udp[0]); p.Listener != "t" || p.Transparent != true {
		t.Errorf("quicParams after the reloads = %+v; want the bound listener's", p)
	}
}
