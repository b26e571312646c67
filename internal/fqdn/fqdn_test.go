package fqdn

import (
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	// 4 labels of 63 plus 3 dots = 255; trimmed to exactly 253 below.
	name253 := label63 + "." + label63 + "." + label63 + "." + strings.Repeat("a", 61)
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{"github.com", "github.com", true},
		{"GitHub.COM", "github.com", true},
		{"github.com.", "github.com", true},
		{"GITHUB.COM.", "github.com", true},
		{"localhost", "localhost", true},
		{"_sip._tcp.example.com", "_sip._tcp.example.com", true},
		{"r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com", true},
		{"1.2.3.example", "1.2.3.example", true},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", true},
		{"bücher.example", "xn--bcher-kva.example", true},
		{"Bücher.Example.", "xn--bcher-kva.example", true},
		{"ｇｉｔｈｕｂ.com", "github.com", true},                // fullwidth letters map to ASCII (UTS #46)
		{"bücher。example", "xn--bcher-kva.example", true}, // ideographic full stop is a dot
		{"faß.de", "xn--fa-hia.de", true},                 // non-transitional: ß stays ß
		{"e\u0301.com", "xn--9ca.com", true},              // NFC: e + combining acute is é
		{"git\u00adhub.com", "github.com", true},          // soft hyphen is ignored (UTS #46)
		{label63 + ".com", label63 + ".com", true},
		{name253, name253, true},
		{name253 + ".", name253, true},

		{"", "", false},
		{".", "", false},
		{"..", "", false},
		{"a..b", "", false},
		{".a", "", false},
		{"a.b..", "", false},
		{label63 + "a.com", "", false},
		{name253 + "a", "", false},
		{"a b.com", "", false},
		{"a/b.com", "", false},
		{"*.github.com", "", false},
		{"github.com:443", "", false},
		{"bücher\x00.example", "", false},
		{"\xff.example", "", false}, // invalid UTF-8
		{"\ufffd.example", "", false},
		{"xn--zz.bücher.example", "", false}, // bad punycode next to a Unicode label

		// IP literals, including spellings a resolver would accept.
		{"127.0.0.1", "", false},
		{"127.0.0.1.", "", false},
		{"198.51.100.7", "", false},
		{"127.1", "", false},
		{"0x7f.1", "", false},
		{"0X7F.0.0.1", "", false},
		{"017.0.0.1", "", false},
		{"2130706433", "", false},
		{"0x7f000001", "", false},
		{"1.0x", "", false},
		{"１２７.０.０.１", "", false}, // fullwidth digits map to an address
		{"::1", "", false},
		{"[::1]", "", false},
		{"2001:db8::1", "", false},
		{"fe80::1%eth0", "", false},
		{"::ffff:169.254.169.254", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := Normalize(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("Normalize(%q) = %q, %v, want %q, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestNormalizeDoesNotAllocate(t *testing.T) {
	for _, s := range []string{"api.github.com", "api.github.com.", "127.0.0.1", "a..b"} {
		if n := testing.AllocsPerRun(100, func() { Normalize(s) }); n != 0 {
			t.Errorf("Normalize(%q) allocates %v times, want 0", s, n)
		}
	}
}

func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"github.com", "Bücher.example.", "0x7f.1", "[::1]", "a..b", "_x.y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := Normalize(s)
		if !ok {
			if n != "" {
				t.Errorf("Normalize(%q) = %q, false, want \"\", false", s, n)
			}
			return
		}
		// The canonical form is its own canonical form.
		if again, ok := Normalize(n); again != n || !ok {
			t.Errorf("Normalize(%q) = %q, %v, want %q, true (from Normalize(%q))", n, again, ok, n, s)
		}
		if p, err := ParsePattern(n); err != nil || !p.Match(n) {
			t.Errorf("ParsePattern(%q) = %v, %v, want a pattern matching %q", n, p, err, n)
		}
	})
}

func BenchmarkNormalize(b *testing.B) {
	for _, s := range []string{"api.github.com", "API.GitHub.com.", "bücher.example"} {
		b.Run(s, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Normalize(s)
			}
		})
	}
}
