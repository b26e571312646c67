package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/fqdn"
	"github.com/egressd/egressd/internal/policy"
)

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config `FILE` to validate (required)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: egressd check --config FILE\n\nExits 0 if the config is valid; otherwise prints every problem as FILE:LINE: message and exits 1.\nA password_env variable that is not set where check runs (CI checks configs without\ntheir secrets) is a warning, FILE:LINE: warning: message; egressd run refuses it.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if *path == "" {
		fs.Usage()
		return 2
	}
	cfg, warnings, err := config.Check(*path)
	if err == nil {
		_, err = cfg.Compile()
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, w := range warnings {
		fmt.Fprintln(stderr, w)
	}
	fmt.Fprintf(stdout, "%s: ok (%d listeners, %d rules)\n", *path, len(cfg.Listeners), len(cfg.Policy.Rules))
	return 0
}

// explanation is explain's --json shape.
type explanation struct {
	Action   string `json:"action"`
	Rule     string `json:"rule"`
	Reason   string `json:"reason"`
	Enforced bool   `json:"enforced"`
}

func cmdExplain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config `FILE` (required)")
	src := fs.String("src", "", "client source `IP` (required)")
	dst := fs.String("dst", "", "destination `IP:PORT` (required)")
	sni := fs.String("sni", "", "server `NAME` the client sends (SNI or Host); none means a connection without a name")
	user := fs.String("user", "", "authenticated proxy `USER` (explicit listeners); none means an unauthenticated connection")
	proto := fs.String("protocol", "", "the connection's `PROTOCOL`: tls, http, ssh, server-first or unknown (default tls with --sni, server-first without)")
	ja4 := fs.String("ja4", "", "the client's JA4 `FINGERPRINT`, as the access log shows it (TLS only); none means a connection without one")
	asJSON := fs.Bool("json", false, `print {"action","rule","reason","enforced"} as JSON`)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: egressd explain --config FILE --src IP --dst IP:PORT [--sni NAME] [--protocol PROTOCOL] [--ja4 FINGERPRINT] [--user USER] [--json]\n\nPrints the decision the running gateway would make for such a connection, with no network I/O.\nFor a connection that carries no name (SSH, server-first), --sni stands for the name the client\nresolved through egressd's DNS.\nA transparent listener in sni_destination: verify mode would also check that NAME resolves to IP;\nexplain cannot (it does no DNS) and says so.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if *path == "" || *src == "" || *dst == "" {
		fs.Usage()
		return 2
	}
	srcIP, err := netip.ParseAddr(*src)
	if err != nil {
		fmt.Fprintf(stderr, "egressd explain: --src: %v\n", err)
		return 2
	}
	dstAP, err := netip.ParseAddrPort(*dst)
	if err != nil {
		fmt.Fprintf(stderr, "egressd explain: --dst: %v\n", err)
		return 2
	}
	switch {
	case *proto == "" && (*sni != "" || *ja4 != ""):
		*proto = "tls"
	case *proto == "":
		*proto = "server-first"
	case !slices.Contains(policy.ProtocolNames, *proto):
		fmt.Fprintf(stderr, "egressd explain: --protocol: unknown %q; want one of %s\n", *proto, strings.Join(policy.ProtocolNames, ", "))
		return 2
	}
	if *ja4 != "" {
		if err := clienthello.CheckJA4(*ja4); err != nil {
			fmt.Fprintf(stderr, "egressd explain: --ja4: %v\n", err)
			return 2
		}
		if *proto != "tls" {
			fmt.Fprintf(stderr, "egressd explain: --ja4: only TLS connections have a fingerprint, not %s\n", *proto)
			return 2
		}
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	pol, err := cfg.Compile()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if *user != "" && !slices.ContainsFunc(cfg.Users, func(u config.User) bool { return u.Name == *user }) {
		fmt.Fprintf(stderr, "egressd explain: --user: %q is not a user of %s\n", *user, *path)
		return 2
	}
	name, _ := fqdn.Normalize(*sni)
	d := pol.DecideDial(policy.Input{Src: srcIP.Unmap(), Dst: dstAP.Addr().Unmap(), Port: dstAP.Port(), FQDN: name, User: *user, Protocol: *proto, JA4: *ja4})
	e := explanation{Action: d.Action.String(), Rule: d.Rule, Reason: d.Reason, Enforced: d.Enforced(cfg.Policy.Enforce, true)}
	if *asJSON {
		b, _ := json.Marshal(e)
		fmt.Fprintln(stdout, string(b))
		return 0
	}
	rule := e.Rule
	if rule == "" {
		rule = "(default)"
	}
	fmt.Fprintf(stdout, "action:   %s\nrule:     %s\nreason:   %s\nenforced: %v\n", e.Action, rule, e.Reason, e.Enforced)
	if *sni != "" && name == "" {
		fmt.Fprintf(stdout, "note:     %q is not an FQDN (IP literal or invalid name): decided without a name\n", *sni)
	}
	return 0
}
