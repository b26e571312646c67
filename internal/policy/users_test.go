package policy

import "testing"

// TestDecideUsers: a rule with users matches only an authenticated user in
// its list; a connection without a user never matches it.
func TestDecideUsers(t *testing.T) {
	rules := []Rule{
		{Name: "ci-github", Action: Allow, Users: []string{"ci-runner", "release"}, FQDN: []string{"*.github.com"}},
		{Name: "ci-any", Action: Deny, Users: []string{"ci-runner"}},
		{Name: "rest", Action: Allow, FQDN: []string{"example.com"}},
	}
	p, err := Compile(rules, Deny)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		in   Input
		want string
	}{
		{Input{FQDN: "api.github.com", User: "ci-runner"}, "ci-github"},
		{Input{FQDN: "api.github.com", User: "release"}, "ci-github"},
		{Input{FQDN: "api.github.com", User: "someone"}, ""},
		{Input{FQDN: "api.github.com"}, ""},
		{Input{FQDN: "example.com", User: "ci-runner"}, "ci-any"},
		{Input{FQDN: "example.com", User: "other"}, "rest"},
		{Input{FQDN: "example.com"}, "rest"},
	}
	for _, tt := range tests {
		if got := p.Decide(tt.in); got.Rule != tt.want {
			t.Errorf("Decide(%+v) = rule %q, want %q", tt.in, got.Rule, tt.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { p.Decide(Input{FQDN: "api.github.com", User: "release"}) }); n != 0 {
		t.Errorf("Decide with a user allocates %v times, want 0", n)
	}
	if _, err := Compile([]Rule{{Name: "x", Action: Allow, Users: []string{""}}}, Deny); err == nil {
		t.Error("Compile accepted an empty user name")
	}
}
