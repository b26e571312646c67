package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestExplainJA4 checks that explain decides on --ja4 as the gateway does
// on the fingerprint it computed, and refuses a fingerprint it could never
// see.
func TestExplainJA4(t *testing.T) {
	base := []string{"explain", "--config", "testdata/ja4.yaml", "--json", "--src", "10.0.0.5", "--dst", "198.51.100.9:443", "--sni", "api.example.com"}
	for _, tc := range []struct {
		ja4  string
		want explanation
	}{
		{"t13d1312h2_f57a46bbacb6_ab7e3b40a677", explanation{"allow", "ci-api", `matched rule "ci-api"`, true}},
		{"t13d3112h2_e8f1e7e78f70_b26ce05bbdd6", explanation{"allow", "ci-api", `matched rule "ci-api"`, true}},
		{"t13d1517h2_8daaf6152771_cb7bf5808d99", explanation{"deny", "", "no rule matched: default deny", true}},
		{"", explanation{"deny", "", "no rule matched: default deny", true}},
	} {
		t.Run(tc.ja4, func(t *testing.T) {
			args := base
			if tc.ja4 != "" {
				args = append(args[:len(args):len(args)], "--ja4", tc.ja4)
			}
			code, out, errOut := runCmd(args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var got explanation
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("output %q: %v", out, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("explain --ja4 %q (-want +got):\n%s", tc.ja4, diff)
			}
		})
	}
	for _, tc := range []struct{ args []string }{
		{[]string{"--ja4", "t13d1312h2_F57A46BBACB6_ab7e3b40a677"}},
		{[]string{"--ja4", "t13d1312h2"}},
		{[]string{"--ja4", "t13d1312h2_f57a46bbacb6_ab7e3b40a677", "--protocol", "ssh"}},
	} {
		args := append(base[:len(base):len(base)], tc.args...)
		if code, _, errOut := runCmd(args...); code != 2 || !strings.Contains(errOut, "--ja4") {
			t.Errorf("explain %v = exit %d %q, want 2 and a message about --ja4", tc.args, code, errOut)
		}
	}
}
