package accesslog

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLogHasEveryKey(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, "json").Log(&Record{
		Start: time.Now().Add(-1500 * time.Millisecond), Listener: "sni",
		Src: netip.MustParseAddrPort("10.0.0.1:4000"), Dst: netip.MustParseAddrPort("[2001:db8::1]:443"),
		FQDN: "a.test", FQDNSource: "sni", Protocol: "tls", ALPN: []string{"h2", "http/1.1"},
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
		"level": "INFO", "msg": "conn", "listener": "sni", "src": "10.0.0.1:4000",
		"dst": "[2001:db8::1]:443", "fqdn": "a.test", "fqdn_source": "sni", "protocol": "tls",
		"alpn": "h2,http/1.1", "ech": false, "rule": "r", "action": "allow", "enforced": true,
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
