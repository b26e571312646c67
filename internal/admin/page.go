package admin

import (
	"bytes"
	"cmp"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/policy"
	"github.com/egressd/egressd/internal/recent"
	"github.com/egressd/egressd/internal/suggest"
)

// The page at "/": what egressd decided lately, for the operator moving
// from report-only to enforcing. It is rendered on the server from a
// Recorder's snapshot and the running config; it loads nothing else (no
// script, style sheet, font or image from anywhere) and refreshes itself
// with a meta tag. It shows names, addresses, user and rule names: never a
// reason, a header or a password.

//go:embed page.html
var pageHTML string

var pageTemplate = template.Must(template.New("page").Parse(pageHTML))

// Page sizes.
const (
	pageNames   = 15 // denied names shown, each with a rule
	pageSources = 15
	pageRules   = 10 // most and least matched rules
	pageRecent  = 50
)

type pageData struct {
	Now, Since string
	Hash       string
	Enforce    bool
	Total      uint64
	Kept       int
	Allowed    uint64
	Denied     uint64
	Waived     uint64 // denies report-only mode let through, among those kept
	Default    uint64 // decisions by the default
	Names      []deniedName
	Sources    []deniedSource
	Most       []ruleRow
	Least      []ruleRow
	Dead       []ruleRow
	Rules      int
	Recent     []recentRow
}

type deniedName struct {
	Name    string
	Count   uint64
	Over    uint64
	Sources string
	YAML    string // the rule that would allow it, as egressd suggest writes it
	Why     string // why there is none
	Open    bool
}

type deniedSource struct {
	Addr  string
	Count uint64
	Over  uint64
	Names string
}

type ruleRow struct {
	Name   string
	Action string
	Line   int
	Count  uint64
}

type recentRow struct {
	Time, Listener, User, Src, Dst, Name, Protocol, Action, Rule string
	Denied, Waived                                               bool
}

// page serves "/".
func page(rec *recent.Recorder, current func() *config.Config) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		if err := pageTemplate.Execute(&b, pageFor(rec.Snapshot(), current(), time.Now())); err != nil {
			http.Error(w, "page: "+err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		// Nothing but this document and its inline style: no script runs.
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		w.Write(b.Bytes())
	}
}

func pageFor(s recent.Snapshot, cfg *config.Config, now time.Time) pageData {
	d := pageData{Now: now.UTC().Format(time.RFC3339), Since: s.Since.UTC().Format(time.RFC3339), Hash: cfg.Hash,
		Enforce: cfg.Policy.Enforce, Total: s.Total, Kept: len(s.Recent), Rules: len(cfg.Policy.Rules)}
	for _, n := range s.Defaults {
		d.Default += n
	}
	for i, e := range s.Recent {
		switch e.Action {
		case accesslog.Allow:
			d.Allowed++
		case accesslog.Deny:
			d.Denied++
			if !e.Enforced {
				d.Waived++
			}
		}
		if i < pageRecent {
			d.Recent = append(d.Recent, recentRowOf(e))
		}
	}
	var users []string
	for _, u := range cfg.Users {
		users = append(users, u.Name)
	}
	for i, n := range s.Names[:min(len(s.Names), pageNames)] {
		dn := deniedName{Name: n.Key, Count: n.Count, Over: n.Over, Open: i < 2}
		dn.Sources, dn.YAML, dn.Why = allowing(n.Key, s.Recent, cfg, users)
		d.Names = append(d.Names, dn)
	}
	for _, c := range s.Sources[:min(len(s.Sources), pageSources)] {
		d.Sources = append(d.Sources, deniedSource{Addr: c.Key.String(), Count: c.Count, Over: c.Over, Names: namesDeniedTo(c.Key, s.Recent)})
	}
	d.Most, d.Least, d.Dead = rules(cfg, s.Rules)
	return d
}

func recentRowOf(e recent.Entry) recentRow {
	r := recentRow{Time: e.Start.UTC().Format("15:04:05"), Listener: e.Listener, User: e.User, Src: e.Src.String(),
		Name: e.FQDN, Protocol: e.Protocol, Action: string(e.Action), Rule: e.Rule,
		Denied: e.Action == accesslog.Deny, Waived: e.Action == accesslog.Deny && !e.Enforced}
	if e.Dst.IsValid() {
		r.Dst = e.Dst.String()
	}
	if r.Rule == "" {
		r.Rule = "(default)"
	}
	return r
}

// allowing returns who was denied name lately, and the rule that would
// allow them, written by egressd suggest's own code from the same
// connections; or why there is none. A name a deny rule of the policy
// denied needs the allow before that rule, which it says.
func allowing(name string, entries []recent.Entry, cfg *config.Config, users []string) (who, yaml, why string) {
	b := suggest.NewBuilder(suggest.Options{Collapse: suggest.DefaultCollapse, Users: users})
	var srcs, by, allowedBy []string
	for _, e := range entries {
		if e.FQDN != name || e.Action != accesslog.Deny {
			continue
		}
		s := e.Src.String()
		if e.User != "" {
			s = "user " + e.User
		}
		if !slices.Contains(srcs, s) {
			srcs = append(srcs, s)
		}
		if a, ok := ruleAction(cfg, e.Rule); ok && a == policy.Allow {
			// The policy allowed it; egressd refused it for a reason of
			// its own (a name that does not resolve, a restricted or
			// spoofed destination). No rule changes that.
			if !slices.Contains(allowedBy, e.Rule) {
				allowedBy = append(allowedBy, e.Rule)
			}
			continue
		}
		if e.Rule != "" && !slices.Contains(by, e.Rule) {
			by = append(by, e.Rule)
		}
		b.AddSeen(&suggest.Conn{Time: e.Start, Listener: e.Listener, User: e.User, Src: netip.AddrPortFrom(e.Src, 0),
			Dst: e.Dst, FQDN: e.FQDN, FQDNSource: e.FQDNSource, Protocol: e.Protocol, Rule: e.Rule,
			Action: e.Action, Enforced: e.Enforced, BytesUp: e.BytesUp, BytesDown: e.BytesDown})
	}
	slices.Sort(srcs)
	who = joinSome(srcs, 5)
	rules := b.Rules()
	switch {
	case len(srcs) == 0:
		return "", "", "no denied connection to it among the latest kept"
	case len(rules) == 0 && len(allowedBy) > 0:
		return who, "", "the policy allows it by rule " + quoted(cfg, allowedBy) + "; egressd refused it for a reason of its own, which the access log gives: a name that does not resolve, a restricted or spoofed destination"
	case len(rules) == 0:
		return who, "", "its connections went to restricted addresses: a rule must name their destinations"
	}
	var y bytes.Buffer
	for _, r := range rules {
		y.WriteString(r.YAML(""))
	}
	if len(by) > 0 {
		why = "denied by rule " + quoted(cfg, by) + ": put the allow before it"
	}
	return who, y.String(), why
}

// quoted words rule names with the lines the running config defines
// them on: `"ads" (line 8), "old"`.
func quoted(cfg *config.Config, rules []string) string {
	slices.Sort(rules)
	words := make([]string, len(rules))
	for i, name := range rules {
		words[i] = strconv.Quote(name)
		for j, r := range cfg.Policy.Rules {
			if r.Name == name && j < len(cfg.Policy.RuleLines) {
				words[i] += fmt.Sprintf(" (line %d)", cfg.Policy.RuleLines[j])
			}
		}
	}
	return strings.Join(words, ", ")
}

// ruleAction is the action of the running config's rule of that name.
func ruleAction(cfg *config.Config, name string) (policy.Action, bool) {
	for _, r := range cfg.Policy.Rules {
		if r.Name == name {
			return r.Action, true
		}
	}
	return 0, false
}

// namesDeniedTo lists the names src was denied lately.
func namesDeniedTo(src netip.Addr, entries []recent.Entry) string {
	var names []string
	for _, e := range entries {
		if e.Src == src && e.Action == accesslog.Deny {
			n := e.FQDN
			if n == "" && e.Dst.IsValid() {
				n = e.Dst.String()
			}
			if n != "" && !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return joinSome(names, 4)
}

// rules sorts the running policy's rules by how often they decided: the
// most, the least (of those that did), and those that never did.
func rules(cfg *config.Config, counts map[string]uint64) (most, least, dead []ruleRow) {
	var matched []ruleRow
	for i, r := range cfg.Policy.Rules {
		row := ruleRow{Name: r.Name, Action: r.Action.String(), Count: counts[r.Name]}
		if i < len(cfg.Policy.RuleLines) {
			row.Line = cfg.Policy.RuleLines[i]
		}
		if row.Count == 0 {
			dead = append(dead, row)
			continue
		}
		matched = append(matched, row)
	}
	slices.SortStableFunc(matched, func(a, b ruleRow) int { return cmp.Compare(b.Count, a.Count) })
	n := min(len(matched), pageRules)
	most = matched[:n]
	rest := matched[n:]
	least = slices.Clone(rest[max(0, len(rest)-pageRules):])
	slices.Reverse(least)
	return most, least, dead
}

func joinSome(items []string, n int) string {
	var b bytes.Buffer
	for i, s := range items {
		if i == n {
			b.WriteString(", …")
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(s)
	}
	return b.String()
}
