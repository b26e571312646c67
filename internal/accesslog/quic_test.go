package accesslog

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestLogQUICPackets: a QUIC flow's line carries its datagram counts, in
// both formats; a TCP connection's does not.
func TestLogQUICPackets(t *testing.T) {
	rec := Record{
		Start: time.Now(), Listener: "t", Src: netip.MustParseAddrPort("10.0.0.1:4000"),
		Dst: netip.MustParseAddrPort("198.51.100.10:443"), FQDN: "a.test", FQDNSource: FromSNI,
		Protocol: ProtocolQUIC, ALPN: []string{"h3"}, Action: Allow, BytesUp: 3000, BytesDown: 9000,
		PacketsUp: 3, PacketsDown: 8,
	}
	var buf bytes.Buffer
	New(&buf, "json").Log(&rec)
	var got struct {
		PacketsUp   *int64 `json:"packets_up"`
		PacketsDown *int64 `json:"packets_down"`
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("not one JSON object: %q", buf.String())
	}
	if got.PacketsUp == nil || *got.PacketsUp != 3 || got.PacketsDown == nil || *got.PacketsDown != 8 {
		t.Errorf("quic line %q: want packets_up 3, packets_down 8", buf.String())
	}

	buf.Reset()
	New(&buf, "text").Log(&rec)
	if s := buf.String(); !strings.Contains(s, "packets_up=3 packets_down=8 duration_ms=") {
		t.Errorf("quic text line %q: want packets_up=3 packets_down=8 before duration_ms", s)
	}

	rec.Protocol = "tls"
	buf.Reset()
	New(&buf, "json").Log(&rec)
	if s := buf.String(); strings.Contains(s, "packets_") {
		t.Errorf("tls line %q carries packet counts", s)
	}
}
