package e2e

import (
	"strings"
	"testing"
)

// Cases shared by the REDIRECT and TPROXY worlds: what the client sees and
// what egressd logs must not depend on how the connection was intercepted.

// sClient runs openssl s_client in cli with input on its stdin. -ign_eof
// keeps it reading until the server closes, so the output holds everything
// the server sent.
func sClient(t testing.TB, w *world, input string, args ...string) (string, error) {
	t.Helper()
	requireTools(t, "openssl")
	return clientCommand(t, w.cli, input, "openssl", append([]string{"s_client", "-brief", "-ign_eof"}, args...)...)
}

// testLoopSetUp: a transparent listener's client whose name's answers are
// cached (the first connection caches them) is set up by a relay loop,
// from accept to relay, with no set-up goroutine, whether its hello fits
// a segment (openssl's) or not (Go's): egressd_loop_setups_total counts
// it.
func testLoopSetUp(t *testing.T, w *world) {
	// Each connection's line is waited for, so that a later test's
	// search of the log does not find it.
	logged := func(from int, what string) {
		t.Helper()
		w.log.expect(t, from, what, byListener("transparent"), want{
			listener: "transparent", dst: srvAddr + ":443", fqdn: "allowed.test", fqdnSource: "sni",
			protocol: []string{"tls"}, rule: rule("allowed"), action: "allow", bytes: 1,
		})
	}
	connect := func() {
		t.Helper()
		from := w.log.mark()
		out, err := sClient(t, w, "", "-connect", srvAddr+":443", "-servername", "allowed.test")
		if !strings.Contains(out, "hello sni=allowed.test") {
			t.Fatalf("openssl s_client through the transparent listener (exit %v):\n%s", err, out)
		}
		logged(from, "openssl")
	}
	loopSetUps := func() float64 {
		t.Helper()
		m, err := adminMetrics(w)
		if err != nil {
			t.Fatalf("metrics: %v", err)
		}
		return m["egressd_loop_setups_total"]
	}
	connect()
	before := loopSetUps()
	connect()
	if after := loopSetUps(); after <= before {
		t.Errorf("egressd_loop_setups_total %v before and %v after a cached name's connection; want one more", before, after)
	}
	// Go's default hello is post-quantum, more than a segment on this
	// 1500-byte path: the loop waits for its rest.
	before = loopSetUps()
	from := w.log.mark()
	c, err := w.cli.dial("", srvAddr+":443")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := greet(c, w.tlsConfig("allowed.test")); err != nil {
		t.Fatalf("Go client: %v", err)
	}
	logged(from, "Go client")
	if after := loopSetUps(); after <= before {
		t.Errorf("egressd_loop_setups_total %v before and %v after a post-quantum hello; want one more", before, after)
	}
}

// testOpenSSLAllowed: openssl s_client with an allowed SNI, TLS 1.2 and 1.3,
// to the Go TLS server and to openssl s_server; the handshake completes and
// the server's answer arrives.
func testOpenSSLAllowed(t *testing.T, w *world, listener string) {
	startOpenSSLServer(t, w.srv, srvAddr+":8443")
	tests := []struct {
		name    string
		args    []string
		input   string
		dst     string
		wantOut []string
	}{
		{
			name:    "tls1.3",
			args:    []string{"-tls1_3", "-connect", srvAddr + ":443", "-servername", "allowed.test"},
			dst:     srvAddr + ":443",
			wantOut: []string{"Protocol version: TLSv1.3", "hello sni=allowed.test local=" + srvAddr + ":443 version=TLS 1.3"},
		},
		{
			name:    "tls1.2",
			args:    []string{"-tls1_2", "-connect", srvAddr + ":443", "-servername", "www.allowed.test"},
			dst:     srvAddr + ":443",
			wantOut: []string{"Protocol version: TLSv1.2", "hello sni=www.allowed.test local=" + srvAddr + ":443 version=TLS 1.2"},
		},
		{
			name:    "openssl s_server",
			args:    []string{"-connect", srvAddr + ":8443", "-servername", "allowed.test"},
			input:   "GET / HTTP/1.0\r\n\r\n",
			dst:     srvAddr + ":8443",
			wantOut: []string{"Protocol version: TLSv1.3", "HTTP/1.0 200 ok", "s_server -accept " + srvAddr + ":8443"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from := w.log.mark()
			out, err := sClient(t, w, tt.input, tt.args...)
			for _, s := range tt.wantOut {
				if !strings.Contains(out, s) {
					t.Errorf("openssl s_client %s: output lacks %q (exit: %v):\n%s", strings.Join(tt.args, " "), s, err, out)
				}
			}
			name := tt.args[len(tt.args)-1]
			w.log.expect(t, from, "openssl "+tt.name, byListener(listener), want{
				listener: listener, dst: tt.dst, fqdn: name, fqdnSource: "sni", protocol: []string{"tls"},
				rule: rule("allowed"), action: "allow", bytes: 1,
			})
		})
	}
}

// testOpenSSLDenied: openssl s_client with a denied SNI gets a TLS
// access_denied alert, and the server never sees a connection.
func testOpenSSLDenied(t *testing.T, w *world, listener string) {
	tests := []struct {
		name string
		sni  string
		rule string
	}{
		{name: "deny rule", sni: "x.ads.test", rule: "ads"},
		{name: "default deny", sni: "nowhere.test", rule: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from, accepts := w.log.mark(), w.tls.accepts.Load()
			args := []string{"-connect", srvAddr + ":443", "-servername", tt.sni}
			out, err := sClient(t, w, "", args...)
			if err == nil || !strings.Contains(out, "alert access denied") {
				t.Errorf("openssl s_client %s: want an access denied alert and a failure, got exit %v:\n%s", strings.Join(args, " "), err, out)
			}
			w.log.expect(t, from, "openssl "+tt.sni, byListener(listener), want{
				listener: listener, dst: srvAddr + ":443", fqdn: tt.sni, fqdnSource: "sni", protocol: []string{"tls"},
				rule: rule(tt.rule), action: "deny",
			})
			if n := w.tls.accepts.Load() - accepts; n != 0 {
				t.Errorf("the server accepted %d connections for a denied client, want 0", n)
			}
		})
	}
}

// testSSH: ssh to the lab host (a restricted address that lab-ssh opens)
// logs in and runs a command.
func testSSH(t *testing.T, w *world, listener string) {
	startSSHD(t, w.srv, labAddr+":22")
	_, key, _ := sshKeys(t)
	from := w.log.mark()
	out, err := clientCommand(t, w.cli, "", "ssh", "-F", "/dev/null", "-i", key,
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "root@"+labAddr, "echo", "ok")
	if err != nil || strings.TrimSpace(out) != "ok" {
		t.Errorf("ssh root@%s echo ok: exit %v, output:\n%s", labAddr, err, out)
	}
	w.log.expect(t, from, "ssh", byListener(listener), want{
		listener: listener, dst: labAddr + ":22", fqdnSource: "none", protocol: []string{"ssh", "server-first"},
		rule: rule("lab-ssh"), action: "allow", bytes: 1,
	})
}
