package policy

import "testing"

// TestEnforced checks when egressd acts on a decision rather than only
// logging it: in enforce mode always; in report-only mode a deny still
// binds when it is destination safety (Hard) or there is nowhere to dial.
func TestEnforced(t *testing.T) {
	for _, tc := range []struct {
		action           Action
		hard             bool
		enforce, haveDst bool
		want             bool
	}{
		{Deny, false, true, true, true},
		{Deny, false, false, true, false}, // report-only waives policy
		{Deny, true, false, true, true},   // never safety
		{Deny, false, false, false, true}, // nor a missing destination
		{Deny, true, true, false, true},
		{Allow, false, true, true, true},
		{Allow, false, false, true, false},
		{Allow, false, false, false, false},
	} {
		d := Decision{Action: tc.action, Hard: tc.hard}
		if got := d.Enforced(tc.enforce, tc.haveDst); got != tc.want {
			t.Errorf("Decision{%v, Hard: %v}.Enforced(%v, %v) = %v, want %v", tc.action, tc.hard, tc.enforce, tc.haveDst, got, tc.want)
		}
	}
}
