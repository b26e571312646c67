// Package internal holds no code: it tests how egressd's packages depend
// on each other.
package internal

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/egressd/egressd/internal/"

// pure are the packages that read and decide without touching the network:
// `egressd check` and `egressd explain` need nothing else, so they run
// anywhere, and a reader can trust that a decision depends only on its
// input. Each may import the others of the set (config compiles a policy,
// which matches fqdn patterns) and nothing else of egressd: every other
// package (listener, peek, dnsproxy, upstream, relay, gateway, admin, ...)
// is higher, closer to the sockets.
var pure = []string{"clienthello", "fqdn", "policy", "config"}

// pureModules are the only code from outside the standard library that the
// pure packages may depend on, each a parser or a hash with no I/O.
var pureModules = []string{
	"golang.org/x/crypto/cryptobyte", // clienthello: the ClientHello's bytes
	"golang.org/x/crypto/bcrypt",     // config: checking password_hash
	"golang.org/x/crypto/blowfish",   // bcrypt's cipher
	"golang.org/x/net/idna",          // fqdn: internationalised names
	"golang.org/x/text/",             // idna's Unicode tables
	"go.yaml.in/yaml/v3",             // config: the file
}

// network reports whether a standard library package is a way to the
// network: net and everything below it but the address types of
// net/netip, and TLS.
func network(path string) bool {
	switch {
	case path == "net/netip":
		return false
	case path == "net", strings.HasPrefix(path, "net/"), path == "crypto/tls":
		return true
	}
	return false
}

// TestPurePackages checks, on what `go list -deps` reports, that the pure
// packages reach no network package, no module but pureModules, and no
// egressd package outside their set.
func TestPurePackages(t *testing.T) {
	for _, name := range pure {
		t.Run(name, func(t *testing.T) {
			for _, dep := range deps(t, module+name) {
				if why := forbidden(dep); why != "" {
					t.Errorf("%s depends on %s: %s", name, dep.ImportPath, why)
				}
			}
		})
	}
}

// forbidden says why a pure package may not depend on dep, or "".
func forbidden(dep pkg) string {
	path := dep.ImportPath
	switch {
	case dep.Standard && network(path):
		return "a network package; the pure packages do no network I/O"
	case dep.Standard:
		return ""
	case strings.HasPrefix(path, module):
		for _, p := range pure {
			if path == module+p {
				return ""
			}
		}
		return "a higher egressd package; the pure packages import only each other"
	}
	for _, m := range pureModules {
		if path == m || strings.HasPrefix(path, strings.TrimSuffix(m, "/")+"/") {
			return ""
		}
	}
	return "not among the modules the pure packages may use (pureModules)"
}

// pkg is the part of `go list -json` output the test reads.
type pkg struct {
	ImportPath string
	Standard   bool
}

// deps lists path and every package it depends on, as go list sees them.
func deps(t *testing.T, path string) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-json", path).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list -deps %s: %v\n%s", path, err, ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v", path, err)
	}
	var all []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list -deps %s: %v", path, err)
		}
		all = append(all, p)
	}
	if len(all) == 0 || all[len(all)-1].ImportPath != path {
		t.Fatalf("go list -deps %s did not list the package itself last", path)
	}
	return all
}

// TestForbidden pins the rule down on examples of each kind.
func TestForbidden(t *testing.T) {
	for _, tt := range []struct {
		dep  pkg
		want bool
	}{
		{pkg{"net/netip", true}, false},
		{pkg{"os", true}, false},
		{pkg{"net", true}, true},
		{pkg{"net/http", true}, true},
		{pkg{"crypto/tls", true}, true},
		{pkg{module + "policy", false}, false},
		{pkg{module + "namecache", false}, true},
		{pkg{module + "relay", false}, true},
		{pkg{"golang.org/x/crypto/cryptobyte/asn1", false}, false},
		{pkg{"golang.org/x/text/unicode/norm", false}, false},
		{pkg{"golang.org/x/net/http2", false}, true},
		{pkg{"github.com/miekg/dns", false}, true},
	} {
		if got := forbidden(tt.dep) != ""; got != tt.want {
			t.Errorf("forbidden(%s) = %v, want %v", tt.dep.ImportPath, got, tt.want)
		}
	}
}
