package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/egressd/egressd/internal/accesslog"
)

// TestConnNoAllocs: counting a connection with labels already seen must not
// allocate; it runs once per connection.
func TestConnNoAllocs(t *testing.T) {
	m := New(Gauges{})
	rec := &accesslog.Record{Start: time.Now(), Listener: "l", Action: accesslog.Allow, Rule: "r", Protocol: "tls", FQDNSource: accesslog.FromSNI, BytesUp: 1, BytesDown: 2}
	m.Conn(rec)
	allocs := testing.AllocsPerRun(1000, func() {
		m.Conn(rec)
		m.PeekWait(time.Millisecond)
		m.Dial(time.Millisecond)
	})
	if allocs != 0 {
		t.Errorf("Conn+PeekWait+Dial allocate %v times per call, want 0", allocs)
	}
	if got := testutil.ToFloat64(m.conns.WithLabelValues("l", "allow", "r", "tls", "sni")); got != 1002 { // once before, and AllocsPerRun runs 1+1000 times
		t.Errorf("egressd_connections_total = %v, want 1002", got)
	}
}

func TestReloadAndInfo(t *testing.T) {
	m := New(Gauges{})
	m.Loaded("aaaa")
	m.Reload(false, "")
	m.Reload(true, "bbbb")
	for _, tc := range []struct {
		name string
		got  float64
		want float64
	}{
		{"reloads{success}", testutil.ToFloat64(m.reloads.WithLabelValues("success")), 1},
		{"reloads{failure}", testutil.ToFloat64(m.reloads.WithLabelValues("failure")), 1},
		{"config_info{hash=bbbb}", testutil.ToFloat64(m.configInfo.WithLabelValues("bbbb")), 1},
		{"config_info series", float64(testutil.CollectAndCount(m.configInfo)), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

// Every auth result is exposed, zero included.
func TestAuthChecks(t *testing.T) {
	m := New(Gauges{AuthChecks: func() map[string]uint64 { return map[string]uint64{"wrong": 7, "backoff": 3} }})
	want := `
# HELP egressd_auth_checks_total Proxy password checks, by result: ok and wrong were hashed; backoff (the source failed too often) and busy (no check slot free) were refused unchecked.
# TYPE egressd_auth_checks_total counter
egressd_auth_checks_total{result="backoff"} 3
egressd_auth_checks_total{result="busy"} 0
egressd_auth_checks_total{result="ok"} 0
egressd_auth_checks_total{result="wrong"} 7
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "egressd_auth_checks_total"); err != nil {
		t.Error(err)
	}
}

// Both refusal reasons are exposed from the start, zero included.
func TestDestinationRefusals(t *testing.T) {
	m := New(Gauges{})
	m.DestinationRefused(RefusedOwnListener)
	m.DestinationRefused(RefusedOwnListener)
	want := `
# HELP egressd_destination_refusals_total Connections refused because egressd would have dialled itself, by reason: own_listener (a listener, the admin endpoint or the DNS forwarder) or local_address (an address of this host the deciding rule's destinations do not name).
# TYPE egressd_destination_refusals_total counter
egressd_destination_refusals_total{reason="local_address"} 0
egressd_destination_refusals_total{reason="own_listener"} 2
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "egressd_destination_refusals_total"); err != nil {
		t.Error(err)
	}
}
