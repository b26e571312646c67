package accesslog

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLogHasEveryKey(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, "json").Log(&Record{
		Start: time.Now().Add(-1500 * time.Millisecond), Listener: "sni", User: "ci-runner",
		Src: netip.MustParseAddrPort("10.0.0.1:4000"), Dst: netip.MustParseAddrPort("[2001:db8::1]:443"),
		FQDN: "a.test", FQDNSource: "sni", Protocol: "tls", ALPN: []string{"h2", "http/1.1"},
		JA4:  "t13d1516h2_8daaf6152771_e5627efa2ab1",
		Rule: "r", Action: "allow", Enforced: true, Reason: "matched", BytesUp: 10, BytesDown: 20,
	})
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("not one JSON object: %q", buf.String())
	}
	if bytes.Count(buf.Bytes(), []byte("\n")) != 1 {
		t.Errorf("want exactly one line, got %q", buf.String())
	}
	if d, _ := got["duration_ms"].(float64); d < 1500 {
		t.Errorf("duration_ms = %v, want >= 1500", got["duration_ms"])
	}
	delete(got, "time")
	delete(got, "duration_ms")
	want := map[string]any{
		"level": "INFO", "msg": "conn", "listener": "sni", "user": "ci-runner", "src": "10.0.0.1:4000",
		"dst": "[2001:db8::1]:443", "fqdn": "a.test", "fqdn_source": "sni", "protocol": "tls",
		"alpn": []any{"h2", "http/1.1"}, "ech": false, "ja4": "t13d1516h2_8daaf6152771_e5627efa2ab1",
		"rule": "r", "action": "allow", "enforced": true,
		"reason": "matched", "bytes_up": 10.0, "bytes_down": 20.0,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("log line (-want +got):\n%s", diff)
	}
}

func BenchmarkLog(b *testing.B) {
	lg := New(discard{}, "json")
	r := &Record{
		Start: time.Now(), Listener: "sni",
		Src: netip.MustParseAddrPort("10.0.0.1:4000"), Dst: netip.MustParseAddrPort("127.0.0.1:443"),
		FQDN: "localhost", FQDNSource: "sni", Protocol: "tls", ALPN: []string{"h2", "http/1.1"},
		Rule: "bench", Action: "allow", Enforced: true, Reason: `matched rule "bench"`, BytesUp: 10, BytesDown: 20,
	}
	b.ReportAllocs()
	for b.Loop() {
		lg.Log(r)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestLogEscapes checks client-supplied bytes cannot break the line: the
// JSON decodes to the same text (invalid UTF-8 as U+FFFD) and stays one line.
func TestLogEscapes(t *testing.T) {
	for _, s := range []string{
		"plain", `quote " and \ backslash`, "new\nline\r\t", "\x00\x01\x1f\x7f",
		"bücher ✓", "bad \xff utf8 \xc3", "\u2028",
	} {
		var buf bytes.Buffer
		New(&buf, "json").Log(&Record{Start: time.Now(), ALPN: []string{s}, Reason: s})
		var got map[string]any
		if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
			t.Fatalf("line for %q is not JSON: %v: %q", s, err, buf.String())
		}
		want := strings.ToValidUTF8(s, "\uFFFD")
		if got["reason"] != want || !cmp.Equal(got["alpn"], []any{want}) {
			t.Errorf("reason/alpn = %q/%q, want %q", got["reason"], got["alpn"], want)
		}
		if bytes.Count(buf.Bytes(), []byte("\n")) != 1 {
			t.Errorf("log for %q is not one line: %q", s, buf.String())
		}
	}
}

// TestLogFieldsBounded: text a client chose (a 16 KiB server name quoted
// in a reason, a 24 KB proxy user name, ALPN ids of 255 bytes) is cut
// short in the line, with a count of what was cut: a client sending such
// text on every connection made each line 100 KB, the log several times
// faster than its own bytes, until the log's reader fell behind and the
// relay loops, which hand their lines to its writer, waited for it.
func TestLogFieldsBounded(t *testing.T) {
	long := strings.Repeat("\x01", 64<<10)
	alpn := make([]string, 16)
	for i := range alpn {
		alpn[i] = strings.Repeat("\x01", 255)
	}
	for _, format := range []string{"json", "text"} {
		var buf bytes.Buffer
		New(&buf, format).Log(&Record{Start: time.Now(), User: long, Reason: "TLS server name " + long, ALPN: alpn})
		if n := buf.Len(); n > 6<<10 { // the fields' bounds count escaped bytes
			t.Errorf("%s: a line of %d bytes, want at most 6 KiB", format, n)
		}
		if !strings.Contains(buf.String(), "bytes cut)") {
			t.Errorf("%s: the line does not say what was cut", format)
		}
		if format == "json" {
			var got map[string]any
			if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
				t.Fatalf("the cut line is not JSON: %v", err)
			}
		}
	}
}

// TestALPNRoundTrips checks the alpn key is a JSON array that decodes to
// the offered list itself: an id may hold a comma, a quote or a control
// byte (RFC 7301 ids are opaque bytes), and a joined string could not tell
// "a,b" from "a" and "b". None offered is [], not null and not absent.
func TestALPNRoundTrips(t *testing.T) {
	for _, alpn := range [][]string{
		nil,
		{},
		{"h2"},
		{"h2", "http/1.1"},
		{"a,b", "c"},
		{`q"uote`, "back\\slash", "ctl\x00\x1f\x7f", "\n"},
		{"\u2028", "bücher", strings.Repeat("x", 255)},
		{"", ","},
	} {
		var buf bytes.Buffer
		New(&buf, "json").Log(&Record{Start: time.Now(), ALPN: alpn})
		var got struct{ ALPN []string }
		if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
			t.Fatalf("line for %q is not JSON: %v: %q", alpn, err, buf.String())
		}
		want := alpn
		if want == nil {
			want = []string{}
		}
		if got.ALPN == nil || !slices.Equal(got.ALPN, want) {
			t.Errorf("alpn %q decodes to %#v from %s", alpn, got.ALPN, buf.Bytes())
		}
	}
}

// TestALPNInvalidUTF8 checks an id that is not UTF-8 decodes as
// encoding/json's own encoding of it does: each bad byte U+FFFD.
func TestALPNInvalidUTF8(t *testing.T) {
	alpn := []string{"\xff\xfe", "ok\xc3", "\x8a\x8a"} // the last: a GREASE id (RFC 8701)
	var buf bytes.Buffer
	New(&buf, "json").Log(&Record{Start: time.Now(), ALPN: alpn})
	var got struct{ ALPN []string }
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("not JSON: %v: %q", err, buf.String())
	}
	std, _ := json.Marshal(alpn)
	var want []string
	json.Unmarshal(std, &want)
	if !slices.Equal(got.ALPN, want) {
		t.Errorf("alpn %q decodes to %q, encoding/json's to %q", alpn, got.ALPN, want)
	}
}

// TestLogTextALPN checks the text format writes the same array, quoted, so
// that a comma or space inside an id cannot split it either.
func TestLogTextALPN(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, "text").Log(&Record{Start: time.Now(), ALPN: []string{"a,b", "c d"}})
	if want := `alpn="[\"a,b\",\"c d\"]"`; !strings.Contains(buf.String(), want) {
		t.Errorf("text line %q, want it to contain %s", buf.String(), want)
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"a", "\"\\", "\xff", "é", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var got string
		if err := json.Unmarshal(appendString(nil, s), &got); err != nil {
			t.Fatalf("appendString(%q) is not a JSON string: %v", s, err)
		}
		if want := strings.ToValidUTF8(s, "\uFFFD"); got != want {
			// ToValidUTF8 folds a run of bad bytes into one U+FFFD; we
			// write one per byte, as encoding/json does.
			if strings.ReplaceAll(got, "\uFFFD", "") != strings.ReplaceAll(want, "\uFFFD", "") {
				t.Errorf("appendString(%q) decodes to %q, want %q", s, got, want)
			}
		}
	})
}

func TestLogDNS(t *testing.T) {
	var b strings.Builder
	New(&b, "json").LogDNS(&DNSRecord{Src: netip.MustParseAddrPort("10.0.0.1:5000"), QName: "x\".test.", QType: "A",
		Rcode: "REFUSED", Result: "refused", Reason: "no rule"})
	var got map[string]any
	if err := json.Unmarshal([]byte(b.String()), &got); err != nil {
		t.Fatalf("LogDNS wrote %q: not JSON: %v", b.String(), err)
	}
	for k, want := range map[string]any{"msg": "dns", "kind": "dns", "src": "10.0.0.1:5000", "qname": "x\".test.", "qtype": "A", "rcode": "REFUSED", "result": "refused"} {
		if got[k] != want {
			t.Errorf("LogDNS line %s = %v, want %v", k, got[k], want)
		}
	}
}

// writes records each Write call.
type writes struct{ calls [][]byte }

func (w *writes) Write(p []byte) (int, error) {
	w.calls = append(w.calls, bytes.Clone(p))
	return len(p), nil
}

// TestLogBatch checks a batch is whole lines, in order, in one write for
// JSON, and one line per write for text (slog writes each record itself).
func TestLogBatch(t *testing.T) {
	rs := []*Record{
		{Start: time.Now(), Listener: "a", Reason: "one"},
		{Start: time.Now(), Listener: "b", Reason: "two\nlines"},
		{Start: time.Now(), Listener: "c", Reason: "three"},
	}
	for _, tc := range []struct {
		format string
		writes int
	}{{"json", 1}, {"text", 3}, {"json-long", 3}} {
		if tc.format == "json-long" {
			// Past 4096 bytes the batch is cut between lines, so no
			// other writer of a shared pipe can land inside one.
			for _, r := range rs { // each within maxReason, the three over 4096
				r.Reason = strings.Repeat("x", 2000)
			}
			tc.format = "json"
		}
		var w writes
		New(&w, tc.format).LogBatch(rs)
		if len(w.calls) != tc.writes {
			t.Errorf("%s: %d writes, want %d", tc.format, len(w.calls), tc.writes)
		}
		for i, c := range w.calls {
			if !bytes.HasSuffix(c, []byte("\n")) || (len(c) > 4096 && bytes.Count(c, []byte("\n")) > 1) {
				t.Errorf("%s: write %d (%d bytes) is not whole lines within 4096 bytes", tc.format, i, len(c))
			}
		}
		all := bytes.Join(w.calls, nil)
		lines := strings.Split(strings.TrimSuffix(string(all), "\n"), "\n")
		if len(lines) != len(rs) {
			t.Fatalf("%s: %d lines, want %d: %q", tc.format, len(lines), len(rs), all)
		}
		for i, l := range lines {
			if !strings.Contains(l, "listener="+rs[i].Listener) && !strings.Contains(l, `"listener":"`+rs[i].Listener+`"`) {
				t.Errorf("%s: line %d is %q, want listener %s", tc.format, i, l, rs[i].Listener)
			}
			if tc.format == "json" && !json.Valid([]byte(l)) {
				t.Errorf("line %d is not JSON: %q", i, l)
			}
		}
	}
}

// TestLogEndTime: a line written after its connection ended (held, then
// queued behind others) carries the end's time and duration, not the
// write's; a record without End is closed when it is written.
func TestLogEndTime(t *testing.T) {
	start := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	end := start.Add(10 * time.Millisecond)
	for _, format := range []string{"json", "text"} {
		var w writes
		lg := New(&w, format)
		lg.LogBatch([]*Record{
			{Start: start, End: end.UnixNano(), Listener: "a"},
			{Start: start, End: end.UnixNano(), Listener: "b"},
		})
		lg.Log(&Record{Start: time.Now().Add(-time.Second), Listener: "c"})
		all := string(bytes.Join(w.calls, nil))
		lines := strings.Split(strings.TrimSuffix(all, "\n"), "\n")
		if len(lines) != 3 {
			t.Fatalf("%s: %d lines: %q", format, len(lines), all)
		}
		for _, l := range lines[:2] {
			if !strings.Contains(l, "2026-12-07T10:00:00.01") || !strings.Contains(l, "duration_ms") ||
				!(strings.Contains(l, `"duration_ms":10`) || strings.Contains(l, "duration_ms=10")) {
				t.Errorf("%s: line not closed at End (10:00:00.010, 10 ms): %s", format, l)
			}
		}
		if strings.Contains(lines[2], "2026-12-07T10:00:00") || strings.Contains(lines[2], `duration_ms":0`) || strings.Contains(lines[2], "duration_ms=0") {
			t.Errorf("%s: a record without End is not closed when written: %s", format, lines[2])
		}
	}
}

// failing is a writer whose every write fails, as on a full disk or a pipe
// whose reader is gone.
type failing struct{ calls int }

func (f *failing) Write(b []byte) (int, error) { f.calls++; return 0, syscall.EPIPE }

// TestLostLines: lines whose write fails are counted, in every format and
// path, and reported on the error log at most once a second.
func TestLostLines(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		var f failing
		var errs bytes.Buffer
		lg := New(&f, format)
		lg.SetErrorLog(slog.New(slog.NewTextHandler(&errs, nil)))
		lg.Log(&Record{Start: time.Now()})
		lg.LogBatch([]*Record{{Start: time.Now()}, {Start: time.Now()}, {Start: time.Now()}})
		lg.LogDNS(&DNSRecord{QName: "a.test"})
		if got := lg.Lost(); got != 5 {
			t.Errorf("%s: Lost() = %d after 5 failed lines, want 5", format, got)
		}
		if n := strings.Count(errs.String(), "access log write failed"); n != 1 {
			t.Errorf("%s: %d error lines in the same second, want 1: %s", format, n, errs.String())
		}
		if !strings.Contains(errs.String(), "broken pipe") {
			t.Errorf("%s: the error line does not say why: %s", format, errs.String())
		}
	}
}
