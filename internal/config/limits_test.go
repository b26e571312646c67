package config

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDeriveLimits(t *testing.T) {
	tests := []struct {
		noFile uint64
		want   Limits
	}{
		// Reserve 256 (the floor): (1024-256)/2.
		{1024, Limits{MaxConnections: 384, MaxConnectionsPerSource: 288, MaxPendingHandshakes: 96, NoFile: 1024}},
		// Reserve a tenth: (65536-6553)/2.
		{65536, Limits{MaxConnections: 29491, MaxConnectionsPerSource: 22118, MaxPendingHandshakes: 7372, NoFile: 65536}},
		{1048576, Limits{MaxConnections: 471859, MaxConnectionsPerSource: 353894, MaxPendingHandshakes: 117964, NoFile: 1048576}},
		// A tiny limit still leaves half for connections, never "no limit".
		{64, Limits{MaxConnections: 16, MaxConnectionsPerSource: 12, MaxPendingHandshakes: 4, NoFile: 64}},
		{1, Limits{MaxConnections: 1, MaxConnectionsPerSource: 1, MaxPendingHandshakes: 1, NoFile: 1}},
		// RLIM_INFINITY: capped at what the config could say.
		{1<<64 - 1, Limits{MaxConnections: 1<<31 - 1, MaxConnectionsPerSource: (1<<31 - 1) * 3 / 4, MaxPendingHandshakes: (1<<31 - 1) / 4, NoFile: 1<<64 - 1}},
		// Unknown: no limits, as before.
		{0, Limits{}},
	}
	for _, tt := range tests {
		if got := DeriveLimits(tt.noFile); got != tt.want {
			t.Errorf("DeriveLimits(%d) = %+v, want %+v", tt.noFile, got, tt.want)
		}
	}
}

// withNoFile makes the config see an open-files limit of n for one test.
func withNoFile(t *testing.T, n uint64) {
	old := noFile
	noFile = func() uint64 { return n }
	t.Cleanup(func() { noFile = old })
}

// Keys the config gives win, 0 included (no limit); the others are
// derived.
func TestLimitsExplicitWin(t *testing.T) {
	withNoFile(t, 65536)
	const one = "listeners: [{name: a, mode: sni, address: 127.0.0.1:1}]\n"
	derived := DeriveLimits(65536)
	tests := []struct {
		name, yaml string
		want       Limits
	}{
		{"no limits section", one, derived},
		{"empty limits section", one + "limits:\n", derived},
		{"one key given", one + "limits: {max_connections: 1000}\n",
			Limits{MaxConnections: 1000, MaxConnectionsPerSource: derived.MaxConnectionsPerSource, MaxPendingHandshakes: derived.MaxPendingHandshakes, NoFile: 65536}},
		{"0 is no limit", one + "limits: {max_connections_per_source: 0}\n",
			Limits{MaxConnections: derived.MaxConnections, MaxConnectionsPerSource: 0, MaxPendingHandshakes: derived.MaxPendingHandshakes, NoFile: 65536}},
		{"every key given", one + "limits: {max_connections: 0, max_connections_per_source: 0, max_pending_handshakes: 7}\n",
			Limits{MaxPendingHandshakes: 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("ok.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse(%q) = %v", tt.yaml, err)
			}
			if diff := cmp.Diff(tt.want, c.Limits); diff != "" {
				t.Errorf("Parse(%q).Limits mismatch (-want +got):\n%s", tt.yaml, diff)
			}
		})
	}
}

func TestLimitsString(t *testing.T) {
	for _, tt := range []struct {
		l    Limits
		want string
	}{
		{Limits{}, "max_connections=none max_connections_per_source=none max_pending_handshakes=none"},
		{DeriveLimits(1024), "max_connections=384 max_connections_per_source=288 max_pending_handshakes=96 (keys not in the config derived from the open-files limit 1024)"},
	} {
		if got := tt.l.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.l, got, tt.want)
		}
	}
}
