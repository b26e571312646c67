// Command egressd is an egress gateway: it learns the destination name of
// every outbound TCP connection (TLS SNI, HTTP Host) without decrypting,
// decides with an ordered FQDN / CIDR / port policy, and relays or refuses.
// It runs on Linux only.
//
//	egressd run [--config FILE]
//	egressd check --config FILE
//	egressd explain --config FILE --src IP --dst IP:PORT [--sni NAME] [--user USER] [--json]
//	egressd suggest --log FILE [--log FILE...] [--config CURRENT | --against CONFIG]
//	egressd version
package main

import (
	"fmt"
	"io"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `egressd — an egress gateway that filters every TCP protocol by destination name.

Usage:
  egressd run [--config FILE]      run the gateway (embedded report-only default without --config)
  egressd check --config FILE      validate a config; print every problem as FILE:LINE: message
  egressd explain --config FILE --src IP --dst IP:PORT [--sni NAME] [--user USER] [--json]
                                   show the decision the gateway would make, with no network I/O
  egressd suggest --log FILE [--log FILE...] [--config CURRENT]
                                   print a policy that allows what the access logs show
  egressd suggest --log FILE [--log FILE...] --against CONFIG
                                   replay the logs through CONFIG's policy: what would change
  egressd version                  print the version

Run "egressd COMMAND --help" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the process exit code; only main
// exits.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "explain":
		return cmdExplain(args[1:], stdout, stderr)
	case "suggest":
		return cmdSuggest(args[1:], os.Stdin, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "egressd", version)
		return 0
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "egressd: unknown command %q\n\n%s", args[0], usage)
	return 2
}
