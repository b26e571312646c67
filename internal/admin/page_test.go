package admin

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/recent"
)

const pageConfig = `listeners:
  - {name: proxy, mode: explicit, address: "127.0.0.1:0"}
users:
  - {name: "ci<runner>", password_hash: "$2a$10$wrkWBbJZHf2nawI5VYSiUexsNfVxbqWcjq5.WjoMQkPuJu87fGZ5C"}
policy:
  enforce: false
  rules:
    - {name: ads, action: deny, fqdn: ["*.ads.test"]}
    - {name: github, action: allow, fqdn: [github.com]}
    - {name: never-used, action: allow, fqdn: [never.test]}
`

func TestPage(t *testing.T) {
	cfg, err := config.Parse("egressd.yaml", []byte(pageConfig))
	if err != nil {
		t.Fatal(err)
	}
	rec := recent.New()
	add := func(src, name, user, rule string, action accesslog.Action, reason string) {
		rec.Add(&accesslog.Record{Start: time.Unix(1e9, 0), Listener: "proxy", User: user, Src: netip.MustParseAddrPort(src),
			Dst: netip.MustParseAddrPort("198.51.100.7:443"), FQDN: name, FQDNSource: accesslog.FromConnect, Protocol: "tls",
			Rule: rule, Action: action, Reason: reason})
	}
	for range 5 {
		add("10.0.0.5:1000", "tracker.example.net", "", "", accesslog.Deny, "no rule matched: default deny")
	}
	add("10.0.0.6:1000", "tracker.example.net", "ci<runner>", "", accesslog.Deny, "no rule matched: default deny")
	add("10.0.0.7:1000", "x.ads.test", "", "ads", accesslog.Deny, `matched rule "ads"; Authorization: Basic c2VjcmV0`)
	add("10.0.0.7:1000", "github.com", "", "github", accesslog.Allow, `matched rule "github"`)

	h := Handler(Options{Registry: metrics.New(metrics.Gauges{}).Registry, Ready: func() (bool, string) { return true, "ready" },
		Log: slog.New(slog.DiscardHandler), Recent: rec, Config: func() *config.Config { return cfg }})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	body := w.Body.String()
	if w.Code != http.StatusOK || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("GET / = %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy = %q, want default-src 'none'", csp)
	}
	for _, want := range []string{
		"report-only",
		`<td class="name">tracker.example.net</td>`,   // the top denied name
		"- name: &#34;allow-tracker.example.net&#34;", // its rule, as suggest writes it
		"users: [&#34;ci&lt;runner&gt;&#34;]",         // a user the config defines, escaped
		"sources: [&#34;10.0.0.5/32&#34;]",
		`denied by rule &#34;ads&#34; (line 8): put the allow before it`,
		`<td class="name">never-used</td>`, // a dead rule
		"10.0.0.5",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	for _, never := range []string{"$2a$10$", "c2VjcmV0", "Authorization", "<script", "ci<runner>"} {
		if strings.Contains(body, never) {
			t.Errorf("the page shows %q", never)
		}
	}
	dead := body[strings.Index(body, `id="dead-rules"`):]
	dead = dead[:strings.Index(dead, "</section>")]
	if strings.Contains(dead, "github") || strings.Contains(dead, ">ads<") {
		t.Errorf("a rule that matched is listed as dead:\n%s", dead)
	}
}

// TestNoPageWithoutRecorder: without a recorder "/" stays a 404, as
// before.
func TestNoPageWithoutRecorder(t *testing.T) {
	h := Handler(Options{Registry: metrics.New(metrics.Gauges{}).Registry, Ready: func() (bool, string) { return true, "" }})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	if w.Code != http.StatusNotFound {
		t.Errorf("GET / without a recorder = %d, want 404", w.Code)
	}
	io.Copy(io.Discard, w.Body)
}

// BenchmarkPage: one render with the recorder full.
func BenchmarkPage(b *testing.B) {
	cfg, err := config.Parse("egressd.yaml", []byte(pageConfig))
	if err != nil {
		b.Fatal(err)
	}
	rec := recent.New()
	for i := range recent.RingSize * 2 {
		rec.Add(&accesslog.Record{Listener: "proxy", Src: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 1),
			FQDN: "n" + string(rune('a'+i%26)) + ".example.com", Action: accesslog.Deny})
	}
	h := page(rec, func() *config.Config { return cfg })
	for b.Loop() {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	}
}
