package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// s3cretHash is bcrypt (cost 10) of "s3cret".
const s3cretHash = "$2a$10$nS3ZyEI3cMaQ.gHRsUQzn.rnw2CnXtSDc4D0YeajXIpkA8mZ4kyMW"

func TestExplicitAndUsers(t *testing.T) {
	t.Setenv("EGRESSD_TEST_PW", "envpass")
	c, err := Parse("ok.yaml", []byte(`listeners:
  - {name: proxy, mode: explicit, address: 127.0.0.1:3128}
  - {name: proxy2, mode: explicit, address: 127.0.0.1:3129, tunnel_sni: log}
users:
  - name: ci-runner
    password_hash: "`+s3cretHash+`"
  - {name: bot, password_env: EGRESSD_TEST_PW}
policy:
  rules:
    - {name: ci, action: allow, users: [ci-runner, bot], fqdn: ["*.github.com"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Listeners[0].TunnelSNI; got != TunnelMatch {
		t.Errorf("default tunnel_sni = %q, want match", got)
	}
	if got := c.Listeners[1].TunnelSNI; got != TunnelLog {
		t.Errorf("tunnel_sni = %q, want log", got)
	}
	if got := c.Policy.Rules[0].Users; len(got) != 2 || got[0] != "ci-runner" || got[1] != "bot" {
		t.Errorf("rule users = %q", got)
	}
	for _, tt := range []struct {
		user, pw string
		want     bool
	}{
		{"ci-runner", "s3cret", true},
		{"ci-runner", "s3cret ", false},
		{"ci-runner", "", false},
		{"bot", "envpass", true},
		{"bot", "envpas", false},
		{"nobody", "s3cret", false},
		{"", "", false},
	} {
		if got := c.Authenticate(tt.user, tt.pw); got != tt.want {
			t.Errorf("Authenticate(%q, %q) = %v, want %v", tt.user, tt.pw, got, tt.want)
		}
	}
}

func TestExplicitErrors(t *testing.T) {
	t.Setenv("EGRESSD_TEST_EMPTY", "")
	_, err := Parse("bad.yaml", []byte(`listeners:
  - {name: proxy, mode: explicit, address: 127.0.0.1:3128, tunnel_sni: maybe}
  - {name: sni, mode: sni, address: 127.0.0.1:8443, tunnel_sni: match}
users:
  - {name: a, password_hash: "plain"}
  - {name: a, password_env: EGRESSD_TEST_EMPTY}
  - {name: "b:c", password_env: EGRESSD_TEST_UNSET_XYZ}
  - {name: d}
  - {name: e, password_hash: "`+s3cretHash+`", password_env: X}
policy:
  rules:
    - {name: r, action: allow, users: [a, ghost]}
    - {name: s, action: allow, users: []}
`))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse = %v, want Errors", err)
	}
	want := []string{
		`bad.yaml:2: listeners[0].tunnel_sni: unknown tunnel_sni "maybe"; want match or log or ignore`,
		`bad.yaml:3: listeners[1].tunnel_sni: applies only to mode explicit`,
		`bad.yaml:5: users[0].password_hash: not a bcrypt hash`,
		`bad.yaml:6: users[1].name: user "a" already defined at line 5`,
		`bad.yaml:6: users[1].password_env: environment variable EGRESSD_TEST_EMPTY is not set or empty`,
		`bad.yaml:7: users[2].name: a user name cannot contain ':'`,
		`bad.yaml:7: users[2].password_env: environment variable EGRESSD_TEST_UNSET_XYZ is not set or empty`,
		`bad.yaml:8: users[3]: missing key "password_hash" or "password_env"`,
		`bad.yaml:9: users[4]: give password_hash or password_env, not both`,
		`bad.yaml:12: policy.rules[0].users[1]: unknown user "ghost"; define it under users`,
		`bad.yaml:13: policy.rules[1].users: empty list`,
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != len(want) {
		t.Fatalf("errors:\n%s\nwant:\n%s", err, strings.Join(want, "\n"))
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("error %d = %q, want it to contain %q", i, got[i], want[i])
		}
	}
}

// TestCheckSecretsElsewhere: Check, for a file checked where its secrets
// are not (CI), takes a password_env variable that is not set for a
// warning, and the config it returns gives that user no password; Parse,
// for a file about to run, takes it for an error. With other errors, the
// warning is listed among them in line order.
func TestCheckSecretsElsewhere(t *testing.T) {
	const file = `listeners:
  - {name: proxy, mode: explicit, address: 127.0.0.1:3128}
users:
  - {name: bot, password_env: EGRESSD_TEST_UNSET_XYZ}
`
	path := filepath.Join(t.TempDir(), "ci.yaml")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	c, warnings, err := Check(path)
	if err != nil {
		t.Fatalf("Check = %v, want only a warning", err)
	}
	want := path + `:4: warning: users[0].password_env: environment variable EGRESSD_TEST_UNSET_XYZ is not set or empty here; egressd run needs it`
	if len(warnings) != 1 || warnings[0].Error() != want {
		t.Errorf("Check warnings = %q, want [%q]", warnings, want)
	}
	if c.Authenticate("bot", "") {
		t.Error(`a user whose variable is missing authenticates with ""`)
	}
	if _, err := Parse("ci.yaml", []byte(file)); err == nil || !strings.Contains(err.Error(), "ci.yaml:4: users[0].password_env: environment variable EGRESSD_TEST_UNSET_XYZ is not set or empty") {
		t.Errorf("Parse = %v, want the missing variable as an error", err)
	}

	if err := os.WriteFile(path, []byte(file+"policy: {default: maybe}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, warnings, err = Check(path)
	got := strings.Split(fmt.Sprint(err), "\n")
	if c != nil || warnings != nil || len(got) != 2 || got[0] != want || !strings.HasPrefix(got[1], path+":5: policy.default:") {
		t.Errorf("Check of a broken file = %v, %q, %v; want no config and the warning, then the error", c, warnings, err)
	}
}
