package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// workDir is the package's scratch directory: binaries, certificates, keys.
// Every world adds its own subdirectory through t.TempDir.
var workDir string

func TestMain(m *testing.M) {
	if addr := os.Getenv(holderEnv); addr != "" {
		os.Exit(runHolder(addr)) // this binary re-executed as TestLoad's upstream
	}
	dir, err := os.MkdirTemp("", "egressd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	workDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// inCI reports whether a missing tool or privilege must fail rather than skip.
func inCI() bool { return os.Getenv("CI") == "true" }

// unavailable skips the test, or fails it in CI, because something the test
// needs is missing from the machine.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if inCI() {
		t.Fatalf("CI=true and %s", msg)
	}
	t.Skip(msg)
}

// requireTools checks that each program is installed.
func requireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			unavailable(t, "%s is not installed: %v", name, err)
		}
	}
}

var privileges struct {
	once sync.Once
	err  error
}

// requirePrivileges checks that the test runs as root and can create a network
// namespace, once per process.
func requirePrivileges(t testing.TB) {
	t.Helper()
	requireTools(t, "ip")
	privileges.once.Do(func() {
		if os.Geteuid() != 0 {
			privileges.err = fmt.Errorf("not root (euid %d)", os.Geteuid())
			return
		}
		name := fmt.Sprintf("%sprobe-%d", nsPrefix, os.Getpid())
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			privileges.err = fmt.Errorf("ip netns add: %v: %s", err, out)
			return
		}
		exec.Command("ip", "netns", "del", name).Run()
		removeStaleNamespaces()
	})
	if privileges.err != nil {
		unavailable(t, "network namespaces are unusable: %v", privileges.err)
	}
}

var egressdBuild struct {
	once sync.Once
	path string
	err  error
}

// egressdBinary builds ./cmd/egressd once per process and returns its path.
func egressdBinary(t testing.TB) string {
	t.Helper()
	egressdBuild.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			egressdBuild.err = err
			return
		}
		out := filepath.Join(workDir, "egressd")
		cmd := exec.Command(goBin, "build", "-o", out, "github.com/egressd/egressd/cmd/egressd")
		cmd.Dir = ".."
		if b, err := cmd.CombinedOutput(); err != nil {
			egressdBuild.err = fmt.Errorf("go build ./cmd/egressd: %v\n%s", err, strings.TrimSpace(string(b)))
			return
		}
		egressdBuild.path = out
	})
	if egressdBuild.err != nil {
		t.Fatal(egressdBuild.err)
	}
	return egressdBuild.path
}
