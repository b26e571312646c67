package main

import (
	"encoding/json"
	"testing"
)

// TestExplainUser: --user feeds the rule field users.
func TestExplainUser(t *testing.T) {
	for _, tt := range []struct {
		user, want string
	}{
		{"ci-runner", "ci-github"},
		{"", ""},
	} {
		args := []string{"explain", "--config", "testdata/explicit.yaml", "--json",
			"--src", "127.0.0.1", "--dst", "140.82.112.3:443", "--sni", "api.github.com"}
		if tt.user != "" {
			args = append(args, "--user", tt.user)
		}
		code, out, errOut := runCmd(args...)
		var got explanation
		if code != 0 || json.Unmarshal([]byte(out), &got) != nil {
			t.Fatalf("explain --user %q = %d %q %q", tt.user, code, out, errOut)
		}
		if got.Rule != tt.want {
			t.Errorf("explain --user %q: rule %q, want %q", tt.user, got.Rule, tt.want)
		}
	}
	if code, _, _ := runCmd("explain", "--config", "testdata/explicit.yaml", "--src", "127.0.0.1",
		"--dst", "140.82.112.3:443", "--user", "ghost"); code != 2 {
		t.Errorf("explain --user ghost exit = %d, want 2", code)
	}
}
