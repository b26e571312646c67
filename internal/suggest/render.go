package suggest

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/egressd/egressd/internal/policy"
)

// Summary is what the policy's header comment says of its input.
type Summary struct {
	Conns       int       // decided connections read
	First, Last time.Time // the first and last seen
	Collapse    int
	Left        Left
}

// Count adds a connection read from the log to the summary: a decided one
// counts and stretches the first and last seen.
func (s *Summary) Count(c *Conn) {
	if !c.Decided() {
		return
	}
	s.Conns++
	if s.First.IsZero() || c.Time.Before(s.First) {
		s.First = c.Time
	}
	if c.Time.After(s.Last) {
		s.Last = c.Time
	}
}

// WritePolicy writes rules as a config file's policy section: report-only
// unless enforce, default deny, each rule after a comment saying what it
// covers.
func WritePolicy(w io.Writer, rules []Rule, enforce bool, s Summary) {
	var b strings.Builder
	b.WriteString("policy:\n")
	comment(&b, "  ", "Suggested by egressd suggest from "+plural(s.Conns, "connection", "connections")+seenSpan(s.First, s.Last)+
		": "+plural(len(rules), "rule that allows", "rules that allow")+" what was seen; everything else falls to the default deny.")
	if s.Collapse > 0 {
		comment(&b, "  ", fmt.Sprintf("Names are collapsed into *.DOMAIN when %d or more below one registrable domain were seen.", s.Collapse))
	}
	for _, line := range s.Left.lines() {
		comment(&b, "  ", line)
	}
	comment(&b, "  ", "Review every rule, replay the log with egressd suggest --against, then set enforce: true.")
	fmt.Fprintf(&b, "  enforce: %v\n  default: deny\n", enforce)
	if len(rules) == 0 {
		b.WriteString("  rules: []\n")
	} else {
		b.WriteString("  rules:\n")
		for i := range rules {
			rules[i].write(&b, "    ")
		}
	}
	io.WriteString(w, b.String())
}

// lines words what was left out, one comment line each.
func (l Left) lines() []string {
	var out []string
	if l.Restricted > 0 {
		more := ""
		if l.Restricted > len(l.RestrictedDst) {
			more = ", ..."
		}
		out = append(out, fmt.Sprintf("Left out: %s to restricted addresses (%s%s); write rules with destinations for those meant to be reached.",
			plural(l.Restricted, "connection", "connections"), strings.Join(l.RestrictedDst, ", "), more))
	}
	if l.NoTarget > 0 {
		out = append(out, "Left out: "+plural(l.NoTarget, "connection", "connections")+" with neither a name nor a destination address.")
	}
	if l.OtherUsers > 0 {
		out = append(out, plural(l.OtherUsers, "connection", "connections")+" of users the config does not define are allowed by their sources.")
	}
	return out
}

// YAML returns r as one item of a rules list, with its comment, each line
// starting with indent.
func (r *Rule) YAML(indent string) string {
	var b strings.Builder
	r.write(&b, indent)
	return b.String()
}

func (r *Rule) write(b *strings.Builder, indent string) {
	comment(b, indent, r.covers())
	if len(r.Names) > 0 {
		comment(b, indent, "names seen: "+sample(r.Names, 8))
	}
	if len(r.SourcesSeen) > 0 && !sameAsSources(r) {
		addrs := make([]string, len(r.SourcesSeen))
		for i, a := range r.SourcesSeen {
			addrs[i] = a.String()
		}
		comment(b, indent, "sources seen: "+sample(addrs, 8))
	}
	fmt.Fprintf(b, "%s- name: %s\n", indent, quote(r.Name))
	in := indent + "  "
	fmt.Fprintf(b, "%saction: allow\n", in)
	if len(r.Users) > 0 {
		fmt.Fprintf(b, "%susers: %s\n", in, list(r.Users, quote))
	}
	if len(r.Sources) > 0 {
		fmt.Fprintf(b, "%ssources: %s\n", in, list(r.Sources, prefix))
	}
	if len(r.FQDN) > 0 {
		fmt.Fprintf(b, "%sfqdn: %s\n", in, list(r.FQDN, quote))
	}
	if len(r.Destinations) > 0 {
		fmt.Fprintf(b, "%sdestinations: %s\n", in, list(r.Destinations, prefix))
	}
	if len(r.Ports) > 0 {
		fmt.Fprintf(b, "%sports: %s\n", in, list(r.Ports, portRange))
	}
	if len(r.Protocols) > 0 {
		fmt.Fprintf(b, "%sprotocols: %s\n", in, list(r.Protocols, quote))
	}
}

// covers words a rule's comment: "12 connections, 3.1 kB up, 1.2 MB down,
// first seen 2026-11-26T10:00:00Z, last seen 2026-11-26T18:30:05Z".
func (r *Rule) covers() string {
	return plural(r.Conns, "connection", "connections") + ", " + Bytes(r.BytesUp) + " up, " + Bytes(r.BytesDown) + " down" + seenSpan(r.First, r.Last)
}

// sameAsSources reports whether the sources list says all there is: each
// a single address seen.
func sameAsSources(r *Rule) bool {
	if len(r.Sources) != len(r.SourcesSeen) {
		return false
	}
	for _, p := range r.Sources {
		if !p.IsSingleIP() {
			return false
		}
	}
	return true
}

func seenSpan(first, last time.Time) string {
	if first.IsZero() {
		return ""
	}
	return ", first seen " + first.UTC().Format(time.RFC3339) + ", last seen " + last.UTC().Format(time.RFC3339)
}

// Bytes words a byte count in SI units: "512 B", "3.1 kB", "1.2 MB".
func Bytes(n int64) string {
	const unit = 1000
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTP"[exp])
}

// sample joins the first n of items, saying how many more there are.
func sample(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return strings.Join(items[:n], ", ") + fmt.Sprintf(" and %d more", len(items)-n)
}

// comment writes text as YAML comment lines, wrapped at about 80
// columns. Text from a log is never trusted to be one line: anything but
// printable characters becomes a space, so no log line can end the comment
// and write YAML.
func comment(b *strings.Builder, indent, text string) {
	text = strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return ' '
		}
		return r
	}, text)
	width := max(40, 80-len(indent)-2)
	line := ""
	for _, word := range strings.Fields(text) {
		if line != "" && len(line)+1+len(word) > width {
			b.WriteString(indent + "# " + line + "\n")
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += word
	}
	b.WriteString(indent + "# " + line + "\n")
}

// plural words n things: "1 connection", "2 connections".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// list writes a YAML flow sequence.
func list[T any](items []T, each func(T) string) string {
	parts := make([]string, len(items))
	for i, it := range items {
		parts[i] = each(it)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// quote writes s as a YAML double-quoted scalar. Go's escapes (\", \\, \n,
// \t, \xNN, \uNNNN, \UNNNNNNNN) are YAML's too; s is valid UTF-8 wherever
// this package uses it (normalised names, rule names, configured users).
func quote(s string) string { return strconv.Quote(s) }

func prefix(p netip.Prefix) string { return quote(p.String()) }

func portRange(r policy.PortRange) string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return quote(fmt.Sprintf("%d-%d", r.Lo, r.Hi))
}
