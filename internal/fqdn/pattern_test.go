package fqdn

import (
	"strings"
	"testing"
)

func TestParsePattern(t *testing.T) {
	tests := []struct {
		in      string
		want    Pattern
		wantErr string // substring of the error; "" for none
	}{
		{in: "github.com", want: Pattern{Base: "github.com"}},
		{in: "GitHub.com.", want: Pattern{Base: "github.com"}},
		{in: "*.github.com", want: Pattern{Base: "github.com", Wildcard: true}},
		{in: "*.Bücher.Example", want: Pattern{Base: "xn--bcher-kva.example", Wildcard: true}},
		{in: "*.com", want: Pattern{Base: "com", Wildcard: true}},
		{in: "*", want: Pattern{Wildcard: true}},
		{in: "localhost", want: Pattern{Base: "localhost"}},

		{in: "", wantErr: "empty fqdn pattern"},
		{in: "foo*.com", wantErr: `"*" is allowed only as the whole first label`},
		{in: "*foo.com", wantErr: `"*" is allowed only as the whole first label`},
		{in: "*.*.com", wantErr: `"*" is allowed only as the whole first label`},
		{in: "a.*.com", wantErr: `"*" is allowed only as the whole first label`},
		{in: "**", wantErr: `"*" is allowed only as the whole first label`},
		{in: "*.", wantErr: "empty name"},
		{in: "10.0.0.1", wantErr: "an IP address, not a name; match addresses with destinations"},
		{in: "*.10.0.0.1", wantErr: "an IP address"},
		{in: "::1", wantErr: "an IP address"},
		{in: "[2001:db8::1]", wantErr: "an IP address"},
		{in: "a..b", wantErr: `fqdn pattern "a..b": empty label`},
		{in: "exa mple.com", wantErr: "invalid character"},
		{in: strings.Repeat("a", 64) + ".com", wantErr: "label longer than 63"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePattern(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("ParsePattern(%q) = %v, %v, want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParsePattern(%q) = %v, %v, want %v, nil", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestPatternMatch(t *testing.T) {
	tests := []struct {
		pattern string
		name    string
		want    bool
	}{
		{"*.github.com", "api.github.com", true},
		{"*.github.com", "a.b.github.com", true},
		{"*.github.com", "github.com", false},
		{"*.github.com", "evilgithub.com", false},
		{"*.github.com", "api.evilgithub.com", false},
		{"*.github.com", "github.com.evil.com", false},
		{"*.github.com", "", false},
		{"github.com", "github.com", true},
		{"github.com", "api.github.com", false},
		{"github.com", "evilgithub.com", false},
		{"github.com", "", false},
		{"*.com", "github.com", true},
		{"*.com", "com", false},
		{"*", "github.com", true},
		{"*", "localhost", true},
		{"*", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" "+tt.name, func(t *testing.T) {
			p, err := ParsePattern(tt.pattern)
			if err != nil {
				t.Fatalf("ParsePattern(%q) = %v", tt.pattern, err)
			}
			if got := p.Match(tt.name); got != tt.want {
				t.Errorf("%v.Match(%q) = %v, want %v", p, tt.name, got, tt.want)
			}
		})
	}
}

func TestPatternString(t *testing.T) {
	for _, s := range []string{"github.com", "*.github.com", "*"} {
		p, err := ParsePattern(s)
		if err != nil {
			t.Fatalf("ParsePattern(%q) = %v", s, err)
		}
		if got := p.String(); got != s {
			t.Errorf("ParsePattern(%q).String() = %q, want %q", s, got, s)
		}
	}
}
