package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/suggest"
)

// logLine writes a conn line as egressd's report-only mode would.
func logLine(src, dst, name string, source accesslog.NameSource, proto, user string) string {
	rec := &accesslog.Record{Start: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC), Listener: "transparent", User: user,
		Src: netip.MustParseAddrPort(src), FQDN: name, FQDNSource: source, Protocol: proto,
		Action: accesslog.Deny, Reason: "no rule matched: default deny", BytesUp: 100, BytesDown: 2000}
	if dst != "" {
		rec.Dst = netip.MustParseAddrPort(dst)
	}
	var b bytes.Buffer
	accesslog.New(&b, "json").Log(rec)
	return b.String()
}

var suggestLog = logLine("10.0.0.5:1000", "140.82.112.3:443", "api.github.com", accesslog.FromSNI, "tls", "") +
	logLine("10.0.0.9:1000", "140.82.112.4:443", "codeload.github.com", accesslog.FromSNI, "tls", "") +
	logLine("10.0.0.9:1000", "140.82.112.4:443", "uploads.github.com", accesslog.FromSNI, "tls", "") +
	logLine("10.0.0.5:1000", "198.51.100.9:22", "git.example.test", accesslog.FromDNS, "ssh", "") +
	logLine("10.0.0.5:1000", "198.51.100.25:25", "", accesslog.FromNone, "server-first", "") +
	// Destination safety binds in report-only mode too: an enforced deny.
	strings.Replace(logLine("10.0.0.5:1000", "169.254.169.254:80", "", accesslog.FromNone, "http", ""), `"enforced":false`, `"enforced":true`, 1) +
	`{"time":"2026-11-26T10:00:00Z","level":"INFO","msg":"dns","kind":"dns","src":"10.0.0.5:53","qname":"x.test"}` + "\n" +
	"not a log line\n"

// TestSuggest runs egressd suggest as an operator would: the log from a
// file, gzip-compressed on stdin, with and without the current config;
// what it prints passes egressd check.
func TestSuggest(t *testing.T) {
	dir := t.TempDir()
	logFile := filepath.Join(dir, "access.log")
	if err := os.WriteFile(logFile, []byte(suggestLog), 0o644); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(suggestLog))
	zw.Close()

	tests := []struct {
		name  string
		args  []string
		stdin []byte
		want  []string
	}{
		{"file", []string{"--log", logFile}, nil, []string{"listeners:", "enforce: false", `fqdn: ["*.github.com"]`,
			`sources: ["10.0.0.0/28"]`, `fqdn: ["git.example.test"]`, `protocols: ["ssh"]`, `destinations: ["198.51.100.25/32"]`,
			"# names seen: api.github.com, codeload.github.com, uploads.github.com", "169.254.169.254:80"}},
		{"stdin gzip", []string{"--log", "-"}, gz.Bytes(), []string{`fqdn: ["*.github.com"]`}},
		{"current config", []string{"--log", logFile, "--config", "testdata/issue.yaml", "--collapse", "0"}, nil,
			[]string{"mode: transparent          # iptables REDIRECT", "strip_ech: true", "enforce: true",
				`fqdn: ["api.github.com"]`, `fqdn: ["codeload.github.com", "uploads.github.com"]`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := cmdSuggest(tt.args, bytes.NewReader(tt.stdin), &out, &errOut); code != 0 {
				t.Fatalf("egressd suggest %s = %d: %s", strings.Join(tt.args, " "), code, errOut.String())
			}
			for _, want := range tt.want {
				if !strings.Contains(out.String(), want) {
					t.Errorf("the suggestion lacks %q:\n%s", want, out.String())
				}
			}
			for _, want := range []string{"6 connection lines, 1 dns lines skipped, 1 lines skipped"} {
				if !strings.Contains(errOut.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, errOut.String())
				}
			}
			proposed := filepath.Join(t.TempDir(), "proposed.yaml")
			if err := os.WriteFile(proposed, out.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			if code, stdout, stderr := runCmd("check", "--config", proposed); code != 0 {
				t.Errorf("egressd check of the suggestion = %d %s %s\n%s", code, stdout, stderr, out.String())
			}
			// Replayed through itself, nothing it saw is denied but the
			// restricted address it left out.
			code, replay, stderr := runCmd("suggest", "--log", logFile, "--against", proposed)
			if code != 0 || !strings.Contains(replay, "1 unchanged, 0 would now be denied, 5 would now be allowed") {
				t.Errorf("egressd suggest --against the suggestion = %d:\n%s%s", code, replay, stderr)
			}
		})
	}
}

func TestSuggestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"suggest"},
		{"suggest", "--config", "testdata/issue.yaml"},
		{"suggest", "--log", "x", "--config", "a", "--against", "b"},
		{"suggest", "--log", "x", "--collapse", "-1"},
	} {
		if code, _, _ := runCmd(args...); code != 2 {
			t.Errorf("egressd %s = %d, want 2", strings.Join(args, " "), code)
		}
	}
	if code, _, errOut := runCmd("suggest", "--help"); code != 0 || !strings.Contains(errOut, "--against") {
		t.Errorf("egressd suggest --help = %d %q", code, errOut)
	}
	if code, _, _ := runCmd("suggest", "--log", "testdata/missing.log"); code != 1 {
		t.Errorf("egressd suggest of a missing log = %d, want 1", code)
	}
	if code, out, _ := runCmd("help"); code != 0 || !strings.Contains(out, "egressd suggest") {
		t.Errorf("egressd help lacks suggest:\n%s", out)
	}
}

// TestReplayMatchesExplain: the replay decides each logged connection as
// egressd explain does, action, rule, reason and enforcement alike.
func TestReplayMatchesExplain(t *testing.T) {
	cfg, err := config.Load("testdata/issue.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := cfg.Compile()
	if err != nil {
		t.Fatal(err)
	}
	r := suggest.NewReplayer(pol, cfg.Policy.Enforce)
	lines := suggestLog +
		logLine("10.99.1.7:1000", "10.99.2.5:22", "", accesslog.FromNone, "ssh", "") +
		logLine("10.0.0.5:1000", "198.51.100.9:443", "x.DoubleClick.net.", accesslog.FromSNI, "tls", "") +
		logLine("10.0.0.5:1000", "[2001:db8::1]:443", "github.com", accesslog.FromConnect, "tls", "") +
		logLine("10.0.0.5:1000", "198.51.100.9:22", "git.example.test", accesslog.FromDNS, "server-first", "")
	n := 0
	if _, err := suggest.Read(strings.NewReader(lines), func(c *suggest.Conn) {
		n++
		d, enforced := r.Decide(c)
		got := explanation{Action: d.Action.String(), Rule: d.Rule, Reason: d.Reason, Enforced: enforced}
		args := []string{"explain", "--config", "testdata/issue.yaml", "--json", "--src", c.Src.Addr().String(),
			"--dst", c.Dst.String(), "--protocol", c.Protocol}
		if c.FQDN != "" {
			args = append(args, "--sni", c.FQDN)
		}
		code, out, errOut := runCmd(args...)
		var want explanation
		if code != 0 || json.Unmarshal([]byte(out), &want) != nil {
			t.Fatalf("egressd %s = %d %s %s", strings.Join(args, " "), code, out, errOut)
		}
		if got != want {
			t.Errorf("replay of %s %s -> %s = %+v, explain says %+v", c.FQDN, c.Src, c.Dst, got, want)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if n != 10 {
		t.Errorf("%d connections compared, want 10", n)
	}
}
