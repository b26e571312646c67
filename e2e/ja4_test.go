package e2e

import (
	"context"
	"io"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/clienthello"
)

// TestJA4 runs curl and openssl s_client through the sni listener and
// checks that each one's log line carries the JA4 of its ClientHello as
// recorded directly: the same program, run here against a plain listener
// that reads its first TLS record.
func TestJA4(t *testing.T) {
	requireTools(t, "curl", "openssl")
	w := newWorld(t, worldOptions{intercept: sniOnly})
	_, sniPort, _ := net.SplitHostPort(sniListenAddr)
	for _, tc := range []struct {
		name    string
		program string
		args    func(host, port string) []string // the client's arguments to reach host:port as allowed.test
	}{
		{"curl", "curl", func(host, port string) []string {
			return []string{"-sk", "--max-time", "10", "-o", "/dev/null",
				"--resolve", "allowed.test:" + port + ":" + host, "https://allowed.test:" + port + "/"}
		}},
		{"openssl", "openssl", func(host, port string) []string {
			return []string{"s_client", "-brief", "-connect", net.JoinHostPort(host, port), "-servername", "allowed.test", "-alpn", "h2,http/1.1"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			direct := recordJA4(t, tc.program, tc.args)
			from := w.log.mark()
			clientCommand(t, w.cli, "", tc.program, tc.args(gwCliAddr, sniPort)...)
			line := w.log.expect(t, from, tc.name, byListener("sni"), want{
				listener: "sni", fqdn: "allowed.test", fqdnSource: "sni", protocol: []string{"tls"},
				rule: rule("allowed"), action: "allow",
			})
			if line.JA4 != direct {
				t.Errorf("%s through egressd: log ja4 %q, want %q, the fingerprint of its hello recorded directly", tc.name, line.JA4, direct)
			}
		})
	}
}

// recordJA4 runs program against a loopback listener in this namespace
// and returns the JA4 of the first TLS record it sends, which for these
// clients holds the whole ClientHello.
func recordJA4(t *testing.T, program string, args func(host, port string) []string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, program, args("127.0.0.1", port)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cancel()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(conn, hdr); err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 5+(int(hdr[3])<<8|int(hdr[4])))
	copy(raw, hdr)
	if _, err := io.ReadFull(conn, raw[5:]); err != nil {
		t.Fatal(err)
	}
	var info clienthello.Info
	if _, st := clienthello.Examine(raw, nil, &info); st != clienthello.Complete {
		t.Fatalf("%s's first record: %v, want a whole ClientHello", program, st)
	}
	return clienthello.JA4(&info, clienthello.TCP)
}
