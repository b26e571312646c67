// Package fqdn gives destination names one canonical form and matches them
// against the policy's name patterns.
//
// A client names its destination in many places (TLS SNI, HTTP Host, CONNECT,
// SOCKS5, DNS questions) and in many spellings: "GitHub.com.", "github.com" and
// an IDN in Unicode all mean the same host to a resolver. If the policy compared
// the spellings, a client could pick one that no rule mentions. So every name is
// normalised here once, before the policy sees it, and the gateway must resolve
// and dial the normalised name, never the raw one, so that what was decided is
// what is reached.
//
// The package does no I/O: it never resolves a name.
package fqdn

import (
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

const (
	maxName  = 253 // octets in the presentation form without the root dot (RFC 1035 §2.3.4: 255 on the wire)
	maxLabel = 63  // RFC 1035 §2.3.4
)

// Reasons a string is not an FQDN. They are constants so that the fast path of
// Normalize never builds a message; ParsePattern puts them in its errors.
const (
	problemEmpty     = "empty name"
	problemTooLong   = "name longer than 253 characters"
	problemLabel     = "label longer than 63 characters"
	problemEmptyPart = "empty label"
	problemChar      = "invalid character (allowed: letters, digits, '-', '_', '.')"
	problemIP        = "an IP address, not a name"
	problemIDN       = "invalid internationalized name"
)

// lookup maps Unicode names to punycode the way a browser does for lookup
// (UTS #46 non-transitional mapping, RFC 5893 bidi rule) with two relaxations,
// because the names egressd sees come from the wild, not from a registry:
//   - underscores are allowed (STD3 rules off): "_sip._tcp.example.com" style
//     names exist; which ASCII characters are allowed is decided by check,
//     the same way for ASCII and Unicode input;
//   - hyphens are not checked: CDN names such as "r3---sn-abc.googlevideo.com"
//     have "--" in the third and fourth positions.
var lookup = idna.New(
	idna.MapForLookup(),
	idna.Transitional(false),
	idna.BidiRule(),
	idna.StrictDomainName(false),
	idna.CheckHyphens(false),
)

// Normalize returns the canonical form of a destination name — lower case, no
// trailing dot, IDN labels as punycode ("bücher.example" becomes
// "xn--bcher-kva.example") — and false when s is not an FQDN.
//
// Not an FQDN: the empty string, a name longer than 253 characters, an empty
// label ("a..b", ".a"), a label longer than 63 characters, a character other
// than a letter, digit, '-', '_' or '.', an invalid IDN, and any IP literal.
// IPv6 literals (bracketed or not, with or without a zone) fail on ':' or '['.
// For IPv4 the rule is the one browsers use (WHATWG URL "ends in a number"):
// a name whose last label is a decimal or 0x-hex number is an address, so
// "127.0.0.1", "127.1", "0x7f.1", "017.0.0.1" and "2130706433", which
// inet_aton would all dial, are not FQDNs. No top-level domain is numeric
// (RFC 3696 §2), so no real name is lost.
//
// ASCII labels are taken as they are: "xn--" labels are not decoded, since
// DNS compares them byte for byte (ignoring case) too. Underscores and
// hyphens are allowed anywhere in a label.
//
// A name that is already lower-case ASCII is returned without allocating
// (s itself, or s without its trailing dot).
func Normalize(s string) (string, bool) {
	n, problem := normalize(s)
	return n, problem == ""
}

// normalize is Normalize with the reason for a refusal ("" when s is an FQDN).
func normalize(s string) (name, problem string) {
	lower := true
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= utf8.RuneSelf:
			return normalizeIDN(s)
		case 'A' <= c && c <= 'Z':
			lower = false
		}
	}
	if !lower {
		s = strings.ToLower(s)
	}
	return check(s)
}

// normalizeIDN maps a name with non-ASCII characters to punycode.
func normalizeIDN(s string) (name, problem string) {
	// idna replaces invalid UTF-8 with U+FFFD without complaint.
	if !utf8.ValidString(s) {
		return "", problemIDN
	}
	a, err := lookup.ToASCII(s)
	if err != nil {
		return "", problemIDN
	}
	return check(strings.ToLower(a))
}

// check validates a lower-case ASCII name and drops one trailing dot.
func check(s string) (name, problem string) {
	s = strings.TrimSuffix(s, ".")
	switch {
	case s == "":
		return "", problemEmpty
	case len(s) > maxName:
		return "", problemTooLong
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			if !nameChar(s[i]) {
				if isIPv6Literal(s) {
					return "", problemIP
				}
				return "", problemChar
			}
			continue
		}
		switch n := i - start; {
		case n == 0:
			return "", problemEmptyPart
		case n > maxLabel:
			return "", problemLabel
		}
		start = i + 1
	}
	if isNumber(s[strings.LastIndexByte(s, '.')+1:]) {
		return "", problemIP
	}
	return s, ""
}

func nameChar(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// isNumber reports whether a lower-case label reads as a number to inet_aton
// or a browser: decimal or octal digits, or "0x" and hex digits.
func isNumber(label string) bool {
	if hex, ok := strings.CutPrefix(label, "0x"); ok {
		return strings.Trim(hex, "0123456789abcdef") == ""
	}
	return label != "" && strings.Trim(label, "0123456789") == ""
}

// isIPv6Literal reports whether s is an IPv6 address, bare or in brackets.
// Only for the message: such strings already fail on their characters.
func isIPv6Literal(s string) bool {
	if inner, ok := strings.CutPrefix(s, "["); ok {
		s, ok = strings.CutSuffix(inner, "]")
		if !ok {
			return false
		}
	}
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6()
}
