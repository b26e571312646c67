package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func runCmd(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestCheck(t *testing.T) {
	code, out, errOut := runCmd("check", "--config", "testdata/issue.yaml")
	if code != 0 || !strings.Contains(out, "ok") {
		t.Errorf("check issue.yaml = %d %q %q, want 0 ok", code, out, errOut)
	}
	code, _, errOut = runCmd("check", "--config", "testdata/broken.yaml")
	if code != 1 {
		t.Errorf("check broken.yaml exit = %d, want 1", code)
	}
	for _, want := range []string{
		"testdata/broken.yaml:5:", "colour",
		"testdata/broken.yaml:7:", "soon",
		"testdata/broken.yaml:12:", "10.0.0.0/33",
		"testdata/broken.yaml:13:", "70000",
		"testdata/broken.yaml:14:", `"r"`,
		"testdata/broken.yaml:15:", "maybe",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("check broken.yaml output lacks %q:\n%s", want, errOut)
		}
	}
	if code, _, _ := runCmd("check", "--config", "testdata/missing.yaml"); code != 1 {
		t.Errorf("check of a missing file exit = %d, want 1", code)
	}
}

func TestExplain(t *testing.T) {
	tests := []struct {
		args []string
		want explanation
	}{
		{[]string{"--src", "10.0.0.5", "--dst", "140.82.112.3:443", "--sni", "api.GitHub.com."},
			explanation{"allow", "github", `matched rule "github"`, true}},
		{[]string{"--src", "10.0.0.5", "--dst", "140.82.112.3:443", "--sni", "github.com"},
			explanation{"allow", "github", `matched rule "github"`, true}},
		{[]string{"--src", "10.0.0.5", "--dst", "140.82.112.3:8443", "--sni", "github.com"},
			explanation{"deny", "", "no rule matched: default deny", true}},
		{[]string{"--src", "10.99.1.7", "--dst", "10.99.2.5:22"},
			explanation{"allow", "lab-ssh", `matched rule "lab-ssh"`, true}},
		{[]string{"--src", "10.99.3.7", "--dst", "10.99.2.5:22"},
			explanation{"deny", "", "no rule matched: default deny", true}},
		{[]string{"--src", "10.0.0.5", "--dst", "198.51.100.9:443", "--sni", "x.doubleclick.net"},
			explanation{"deny", "ads", `matched rule "ads"`, true}},
		{[]string{"--src", "10.0.0.5", "--dst", "169.254.169.254:443", "--sni", "github.com"},
			explanation{"deny", "github", `destination 169.254.169.254 is restricted, not covered by rule "github" destinations`, true}},
		{[]string{"--src", "10.0.0.5", "--dst", "140.82.112.3:443", "--sni", "140.82.112.3"},
			explanation{"deny", "", "no rule matched: default deny", true}},
		{[]string{"--src", "10.0.0.5", "--dst", "198.51.100.9:22", "--sni", "git.example.test", "--protocol", "ssh"},
			explanation{"allow", "git-ssh", `matched rule "git-ssh"`, true}},
		{[]string{"--src", "10.0.0.5", "--dst", "198.51.100.9:22", "--sni", "git.example.test"}, // tls by default
			explanation{"deny", "", "no rule matched: default deny", true}},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			args := append([]string{"explain", "--config", "testdata/issue.yaml", "--json"}, tc.args...)
			code, out, errOut := runCmd(args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var got explanation
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("output %q: %v", out, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("explain %v (-want +got):\n%s", tc.args, diff)
			}
		})
	}
}

func TestExplainBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"explain", "--config", "testdata/issue.yaml", "--src", "nope", "--dst", "1.2.3.4:443"},
		{"explain", "--config", "testdata/issue.yaml", "--src", "1.2.3.4", "--dst", "1.2.3.4"},
		{"explain", "--config", "testdata/issue.yaml"},
		{"explain", "--config", "testdata/issue.yaml", "--src", "1.2.3.4", "--dst", "1.2.3.4:22", "--protocol", "smtp"},
		{"frobnicate"},
	} {
		if code, _, _ := runCmd(args...); code != 2 {
			t.Errorf("%v exit = %d, want 2", args, code)
		}
	}
	if code, out, _ := runCmd("version"); code != 0 || !strings.HasPrefix(out, "egressd ") {
		t.Errorf("version = %d %q", code, out)
	}
}
