package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runProcess runs egressd as a child process (see TestMain) until it
// exits, and returns its exit code and the lines of its stderr.
func runProcess(t *testing.T, args ...string) (code int, stderr []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	var e bytes.Buffer
	cmd.Stderr = &e
	if err := cmd.Run(); err != nil && cmd.ProcessState == nil {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), strings.Split(strings.TrimSpace(e.String()), "\n")
}

// TestCheckWithoutSecrets: CI checks configs without their secrets, so a
// password_env variable that is not set is a warning for check (exit 0,
// FILE:LINE: warning: ...) and an error for run (exit 1, FILE:LINE: ...).
func TestCheckWithoutSecrets(t *testing.T) {
	const file = "testdata/secret.yaml"
	t.Setenv("EGRESSD_TEST_UNSET_SECRET", "") // empty counts as unset
	code, out, errOut := runCmd("check", "--config", file)
	want := file + ":7: warning: users[0].password_env: environment variable EGRESSD_TEST_UNSET_SECRET is not set or empty here; egressd run needs it\n"
	if code != 0 || errOut != want || !strings.Contains(out, "ok") {
		t.Errorf("check = %d, stdout %q, stderr %q; want 0, ok and stderr %q", code, out, errOut, want)
	}

	code, lines := runProcess(t, "run", "--config", file)
	want = file + ":7: users[0].password_env: environment variable EGRESSD_TEST_UNSET_SECRET is not set or empty"
	if code != 1 || lines[len(lines)-1] != want {
		t.Errorf("run = %d, stderr ends %q; want 1 and %q", code, lines[len(lines)-1], want)
	}
}

// TestBusyPort: a listener whose address is taken stops egressd with one
// line that names the listener and the address.
func TestBusyPort(t *testing.T) {
	taken, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	path := filepath.Join(t.TempDir(), "egressd.yaml")
	cfg := fmt.Sprintf("listeners:\n  - {name: sni, mode: sni, address: %q}\n", addr)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	code, lines := runProcess(t, "run", "--config", path)
	last := lines[len(lines)-1]
	want := "egressd: listener sni: listen tcp4 " + addr + ": bind: address already in use"
	if code != 1 || last != want {
		t.Errorf("run = %d, stderr ends %q; want 1 and %q", code, last, want)
	}
}
