package suggest

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/policy"
)

// Replayer decides logged connections again with another policy, through
// policy.DecideDial and Decision.Enforced: the functions the gateway and
// `egressd explain` decide with, so a replay cannot disagree with them.
// What it cannot know from a log line it takes as the line says: the
// address dialled is the name's only answer (no DNS is asked).
type Replayer struct {
	pol     *policy.Policy
	enforce bool

	Replayed   int // decided connections replayed
	Undecided  int // lines no policy decided (not replayed)
	Unchanged  int
	NowDenied  int // now denied, of which Refused would be refused
	Refused    int
	NowAllowed int
	changes    map[changeKey]*Change
}

// Change is one kind of connection a replay decides differently: one
// destination, one outcome, one deciding rule.
type Change struct {
	Denied      bool   // now denied; else now allowed
	Refused     bool   // a deny the policy would act on (enforced), not only log
	Destination string // "github.com:443", "203.0.113.5:22 (ssh)"
	Rule        string // the rule that now decides; "" for the default
	Was         string // how the log decided it: `allow by rule "x"`, "deny by default"
	Conns       int
	Who         []string // the sources (or "user NAME") that made them, sorted
}

type changeKey struct {
	denied, refused bool
	destination     string
	rule, was       string
}

// NewReplayer replays with pol; enforce is the policy's enforce setting.
func NewReplayer(pol *policy.Policy, enforce bool) *Replayer {
	return &Replayer{pol: pol, enforce: enforce, changes: make(map[changeKey]*Change)}
}

// Add replays one connection.
func (r *Replayer) Add(c *Conn) {
	if !c.Decided() {
		r.Undecided++
		return
	}
	r.Replayed++
	in := c.Input()
	d, enforced := r.Decide(c)
	wasAllowed := c.Action == accesslog.Allow
	var k changeKey
	switch {
	case d.Action == policy.Deny && (wasAllowed || !c.Enforced && enforced):
		// Let through before (allowed, or a deny report-only waived), and
		// denied now: refused, or at least logged as a deny.
		k.denied, k.refused = true, enforced
		r.NowDenied++
		if enforced {
			r.Refused++
		}
	case d.Action == policy.Allow && !wasAllowed:
		r.NowAllowed++
	default:
		r.Unchanged++
		return
	}
	k.destination = destination(c, in)
	k.rule = d.Rule
	k.was = string(c.Action) + " by " + ruleWords(c.Rule)
	ch := r.changes[k]
	if ch == nil {
		ch = &Change{Denied: k.denied, Refused: k.refused, Destination: k.destination, Rule: k.rule, Was: k.was}
		r.changes[k] = ch
	}
	ch.Conns++
	who := in.Src.String()
	if c.User != "" {
		who = "user " + c.User
	}
	if i, found := slices.BinarySearch(ch.Who, who); !found && len(ch.Who) < maxWho {
		ch.Who = slices.Insert(ch.Who, i, who)
	}
}

// Decide decides c as the gateway would with the replay's policy, and
// says whether a deny would be enforced: policy.DecideDial on the
// connection's Input, then Decision.Enforced, as `egressd explain` does.
func (r *Replayer) Decide(c *Conn) (d policy.Decision, enforced bool) {
	in := c.Input()
	d = r.pol.DecideDial(in)
	return d, d.Enforced(r.enforce, in.Dst.IsValid())
}

// maxWho bounds the sources a Change keeps.
const maxWho = 64

// destination words where a connection went: its name (or address) and
// port, and its protocol when it carried no name of its own.
func destination(c *Conn, in policy.Input) string {
	var s string
	switch {
	case in.FQDN != "" && in.Port != 0:
		s = in.FQDN + ":" + fmt.Sprint(in.Port)
	case in.FQDN != "":
		s = in.FQDN
	case in.Dst.IsValid():
		s = netip.AddrPortFrom(in.Dst, in.Port).String()
	default:
		s = "(no destination)"
	}
	if (in.FQDN == "" || c.FQDNSource == accesslog.FromDNS) && in.Protocol != "" {
		s += " (" + in.Protocol + ")"
	}
	return s
}

func ruleWords(rule string) string {
	if rule == "" {
		return "default"
	}
	return fmt.Sprintf("rule %q", rule)
}

// Changes returns what the replay decides differently, the most
// connections first.
func (r *Replayer) Changes() []Change {
	out := make([]Change, 0, len(r.changes))
	for _, c := range r.changes {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b Change) int {
		return cmp.Or(compareBool(!a.Denied, !b.Denied), compareBool(!a.Refused, !b.Refused), cmp.Compare(b.Conns, a.Conns),
			strings.Compare(a.Destination, b.Destination), strings.Compare(a.Rule, b.Rule), strings.Compare(a.Was, b.Was))
	})
	return out
}

// Write prints the replay's outcome for a person: the counts, then each
// destination that would now be denied or allowed, with who connected.
func (r *Replayer) Write(w io.Writer, against string) {
	mode := "report-only (enforce: false): a deny is logged, not refused"
	if r.enforce {
		mode = "enforcing"
	}
	fmt.Fprintf(w, "replayed %s against %s, %s\n", plural(r.Replayed, "connection", "connections"), against, mode)
	if r.Undecided > 0 {
		fmt.Fprintf(w, "(%d more lines were not decided by a policy: action none, or refused before a decision)\n", r.Undecided)
	}
	fmt.Fprintf(w, "%d unchanged, %d would now be denied, %d would now be allowed\n", r.Unchanged, r.NowDenied, r.NowAllowed)
	changes := r.Changes()
	section := func(title string, n int, pick func(Change) bool) {
		if n == 0 {
			return
		}
		these := "these"
		if n == 1 {
			these = "this"
		}
		fmt.Fprintf(w, "\n%s %s %s:\n", these, plural(n, "connection", "connections"), title)
		for _, c := range changes {
			if !pick(c) {
				continue
			}
			fmt.Fprintf(w, "  %6d  %s  from %s\n          now: %s; logged: %s\n", c.Conns, c.Destination, whoWords(c.Who),
				nowWords(c), c.Was)
		}
	}
	section("would now be denied and refused", r.Refused, func(c Change) bool { return c.Denied && c.Refused })
	section("would now be denied, logged only (report-only)", r.NowDenied-r.Refused, func(c Change) bool { return c.Denied && !c.Refused })
	section("would now be allowed", r.NowAllowed, func(c Change) bool { return !c.Denied })
}

func nowWords(c Change) string {
	action := "allow"
	if c.Denied {
		action = "deny"
	}
	return action + " by " + ruleWords(c.Rule)
}

func whoWords(who []string) string {
	s := sample(who, 6)
	if len(who) == maxWho {
		s += " (and maybe more)"
	}
	return s
}
