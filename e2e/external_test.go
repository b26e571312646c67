package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// credentials are made once per test binary in workDir: a self-signed
// certificate for allowed.test and *.allowed.test (openssl req), and an SSH
// host key and client key (ssh-keygen).
var credentials struct {
	certOnce sync.Once
	certErr  error
	certFile string
	keyFile  string
	cert     tls.Certificate
	roots    *x509.CertPool

	sshOnce    sync.Once
	sshErr     error
	hostKey    string
	clientKey  string
	authorized string
}

// serverCert returns the test certificate and a pool that trusts it.
func serverCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	requireTools(t, "openssl")
	c := &credentials
	c.certOnce.Do(func() {
		c.certFile = filepath.Join(workDir, "cert.pem")
		c.keyFile = filepath.Join(workDir, "key.pem")
		out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
			"-nodes", "-keyout", c.keyFile, "-out", c.certFile, "-days", "2", "-subj", "/CN=allowed.test",
			"-addext", "subjectAltName=DNS:allowed.test,DNS:*.allowed.test").CombinedOutput()
		if err != nil {
			c.certErr = fmt.Errorf("openssl req: %v\n%s", err, out)
			return
		}
		if c.cert, err = tls.LoadX509KeyPair(c.certFile, c.keyFile); err != nil {
			c.certErr = err
			return
		}
		pem, _ := os.ReadFile(c.certFile)
		c.roots = x509.NewCertPool()
		c.roots.AppendCertsFromPEM(pem)
	})
	if c.certErr != nil {
		t.Fatal(c.certErr)
	}
	return c.cert, c.roots
}

// sshKeys returns the paths of the SSH host key, the client key and an
// authorized_keys file holding the client's public key.
func sshKeys(t testing.TB) (hostKey, clientKey, authorized string) {
	t.Helper()
	requireTools(t, "ssh-keygen")
	c := &credentials
	c.sshOnce.Do(func() {
		c.hostKey = filepath.Join(workDir, "ssh_host_ed25519_key")
		c.clientKey = filepath.Join(workDir, "id_ed25519")
		for _, key := range []string{c.hostKey, c.clientKey} {
			if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
				c.sshErr = fmt.Errorf("ssh-keygen: %v\n%s", err, out)
				return
			}
		}
		pub, err := os.ReadFile(c.clientKey + ".pub")
		if err != nil {
			c.sshErr = err
			return
		}
		c.authorized = filepath.Join(workDir, "authorized_keys")
		c.sshErr = os.WriteFile(c.authorized, pub, 0o600)
	})
	if c.sshErr != nil {
		t.Fatal(c.sshErr)
	}
	return c.hostKey, c.clientKey, c.authorized
}

// startOpenSSLServer runs `openssl s_server -www` on addr in ns: it answers
// "GET /" with an HTML status page.
func startOpenSSLServer(t testing.TB, ns *netns, addr string) {
	t.Helper()
	serverCert(t)
	p := startProcess(t, "openssl s_server", ns.command(context.Background(), "openssl", "s_server",
		"-accept", addr, "-cert", credentials.certFile, "-key", credentials.keyFile, "-www", "-quiet"), nil, nil)
	ns.waitListening(t, addr, p)
}

// startSSHD runs sshd on addr in ns with its own config: key login as root.
func startSSHD(t testing.TB, ns *netns, addr string) {
	t.Helper()
	requireTools(t, "ssh")
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd, err = exec.LookPath("/usr/sbin/sshd") // not always on a user's PATH
	}
	if err != nil {
		unavailable(t, "sshd is not installed: %v", err)
	}
	sshd, _ = filepath.Abs(sshd) // sshd refuses to run from a relative path
	hostKey, _, authorized := sshKeys(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sshd_config")
	text := fmt.Sprintf(`ListenAddress %s
HostKey %s
AuthorizedKeysFile %s
PidFile %s
UsePAM no
StrictModes no
PermitRootLogin yes
PasswordAuthentication no
KbdInteractiveAuthentication no
`, addr, hostKey, authorized, filepath.Join(dir, "sshd.pid"))
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // privilege separation directory
		t.Fatal(err)
	}
	p := startProcess(t, "sshd", ns.command(context.Background(), sshd, "-D", "-e", "-f", cfg), nil, nil)
	ns.waitListening(t, addr, p)
}

// clientCommand runs a client program in ns with stdin as input, and returns
// its combined output; it is killed after 30 s.
func clientCommand(t testing.TB, ns *netns, input string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := ns.command(ctx, name, args...)
	cmd.Stdin = strings.NewReader(input)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out: %w", name, ctx.Err())
	}
	return string(out), err
}
