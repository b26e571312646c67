package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/suggest"
)

const suggestUsage = `Usage: egressd suggest --log FILE [--log FILE...] [--config CURRENT] [--collapse N]
       egressd suggest --log FILE [--log FILE...] --against CONFIG

Reads egressd's access logs (its JSON lines; plain or gzip, told apart by
their first bytes; --log - reads stdin) and prints a config whose policy
allows what the logs show and denies the rest. Each rule says in a comment
what it covers: connections, bytes, first and last seen.

  - Rules are grouped by who connected: the users of --config, else the
    sources, as the smallest CIDRs they share within a /24 (IPv6: /64).
  - Names stay as seen, except that N or more names below one registrable
    domain (--collapse, default 3; 0 never) become "*.DOMAIN". A public
    suffix is never collapsed into: no "*.com", no "*.co.uk", no "*.github.io".
  - Ports are those seen. SSH and server-first connections are allowed by the
    name their client resolved through egressd's DNS, or by their
    destination address, for the protocols seen.
  - Connections to restricted addresses (private, loopback, link-local) are
    left out and counted: a rule that opens them is for a person to write.

With --config CURRENT, the output is CURRENT with its policy section replaced
(enforce keeps CURRENT's setting); without it, egressd's built-in listeners
around the policy, in report-only mode. The output always passes egressd check.

With --against CONFIG, nothing is suggested: the logged connections are
decided again with CONFIG's policy, by the function the gateway and egressd
explain decide with, and the connections that would now be denied or allowed
are listed with their destinations and sources.

The DNS forwarder's lines and lines that are not egressd's JSON are skipped
and counted on stderr.
`

// logFiles is the repeatable --log flag.
type logFiles []string

func (l *logFiles) String() string     { return strings.Join(*l, ",") }
func (l *logFiles) Set(s string) error { *l = append(*l, s); return nil }

func cmdSuggest(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("suggest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var logs logFiles
	fs.Var(&logs, "log", "access log `FILE` to read (repeatable; - for stdin)")
	current := fs.String("config", "", "`CURRENT` config whose policy the suggestion replaces")
	against := fs.String("against", "", "`CONFIG` whose policy the logged connections are replayed through")
	collapse := fs.Int("collapse", suggest.DefaultCollapse, "`N` names below one registrable domain make *.DOMAIN (0: never)")
	fs.Usage = func() {
		fmt.Fprint(stderr, suggestUsage+"\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if len(logs) == 0 || fs.NArg() > 0 || *collapse < 0 || *current != "" && *against != "" {
		fs.Usage()
		return 2
	}
	if *against != "" {
		return replay(logs, *against, stdin, stdout, stderr)
	}

	var cfg *config.Config
	var text []byte
	opts := suggest.Options{Collapse: *collapse}
	if *current != "" {
		var err error
		// Checked as egressd check checks it: a password_env variable
		// that is not set here is no reason not to suggest.
		if cfg, _, err = config.Check(*current); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if text, err = os.ReadFile(*current); err != nil {
			fmt.Fprintln(stderr, "egressd suggest:", err)
			return 1
		}
		for _, u := range cfg.Users {
			opts.Users = append(opts.Users, u.Name)
		}
	}
	b := suggest.NewBuilder(opts)
	sum := suggest.Summary{Collapse: *collapse}
	err := readLogs(logs, stdin, stderr, func(c *suggest.Conn) {
		b.Add(c)
		sum.Count(c)
	})
	if err != nil {
		fmt.Fprintln(stderr, "egressd suggest:", err)
		return 1
	}
	rules := b.Rules()
	sum.Left = b.Left()
	var section bytes.Buffer
	suggest.WritePolicy(&section, rules, cfg != nil && cfg.Policy.Enforce, sum)
	name := *current
	if name == "" {
		name = "(suggested)"
	}
	out, err := suggest.Document(name, text, section.Bytes())
	if err != nil {
		// A suggestion that egressd would not load is a bug here, never
		// something to print.
		fmt.Fprintf(stderr, "egressd suggest: the suggested config does not load (a bug in suggest):\n%v\n", err)
		return 1
	}
	stdout.Write(out)
	fmt.Fprintf(stderr, "egressd suggest: %d rules for %d connections", len(rules), sum.Conns)
	if l := sum.Left; l.Undecided+l.Restricted+l.NoTarget > 0 {
		fmt.Fprintf(stderr, " (left out: %d not decided by a policy, %d to restricted addresses, %d without a destination)",
			l.Undecided, l.Restricted, l.NoTarget)
	}
	fmt.Fprintln(stderr)
	return 0
}

// replay decides the logged connections again with the policy of the config
// at path and prints what changes.
func replay(logs []string, path string, stdin io.Reader, stdout, stderr io.Writer) int {
	cfg, _, err := config.Check(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	pol, err := cfg.Compile()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	r := suggest.NewReplayer(pol, cfg.Policy.Enforce)
	if err := readLogs(logs, stdin, stderr, r.Add); err != nil {
		fmt.Fprintln(stderr, "egressd suggest:", err)
		return 1
	}
	r.Write(stdout, path)
	return 0
}

// readLogs reads each log in turn ("-" is stdin) and says on stderr what
// each held besides connection lines.
func readLogs(logs []string, stdin io.Reader, stderr io.Writer, each func(*suggest.Conn)) error {
	for _, name := range logs {
		var r io.Reader = stdin
		if name != "-" {
			f, err := os.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			r = f
		} else {
			name = "stdin"
		}
		st, err := suggest.Read(r, each)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Fprintf(stderr, "egressd suggest: %s: %d connection lines", name, st.Conns)
		if st.DNS > 0 {
			fmt.Fprintf(stderr, ", %d dns lines skipped", st.DNS)
		}
		if st.Garbage > 0 {
			fmt.Fprintf(stderr, ", %d lines skipped that are not egressd's JSON connection lines", st.Garbage)
		}
		fmt.Fprintln(stderr)
	}
	return nil
}
