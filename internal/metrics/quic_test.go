package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestUDPCounts: the UDP sides' counters are exposed as read at scrape
// time, and only when there is a UDP side.
func TestUDPCounts(t *testing.T) {
	m := New(Gauges{UDP: func() UDPCounts {
		return UDPCounts{Flows: 3, Pending: 1, Closes: 7, Dropped: map[string]uint64{"not_initial": 5, "denied": 2}}
	}})
	want := `
# HELP egressd_quic_dropped_datagrams_total UDP datagrams dropped by a listener's UDP side, by reason: not_initial, unknown_version, malformed, limit, held_full, undecided, denied, too_big, no_destination, short_initial, changed_hello, not_quic.
# TYPE egressd_quic_dropped_datagrams_total counter
egressd_quic_dropped_datagrams_total{reason="denied"} 2
egressd_quic_dropped_datagrams_total{reason="not_initial"} 5
# HELP egressd_quic_flows QUIC flows (UDP) held now: undecided, relayed, or remembered as denied.
# TYPE egressd_quic_flows gauge
egressd_quic_flows 3
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "egressd_quic_flows", "egressd_quic_dropped_datagrams_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(New(Gauges{}).Registry, "egressd_quic_flows"); err != nil || n != 0 {
		t.Errorf("without a UDP side: %d egressd_quic_flows series, %v; want none", n, err)
	}
}
