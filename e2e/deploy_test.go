package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
)

// TestDeployScripts runs deploy/iptables.sh and deploy/nftables.sh in gw,
// as an operator would, and sends clients through the interception they set
// up; then "delete" must leave no rule behind.
func TestDeployScripts(t *testing.T) {
	tests := []struct {
		script, mode, port, listener string
		leftover                     []string // program and args whose output must not mention egressd's rules after delete
	}{
		{"iptables.sh", "redirect", portTransparent, "transparent", []string{"iptables-save"}},
		{"iptables.sh", "tproxy", portTProxy, "tproxy", []string{"iptables-save"}},
		{"nftables.sh", "redirect", portTransparent, "transparent", []string{"nft", "list", "ruleset"}},
		{"nftables.sh", "tproxy", portTProxy, "tproxy", []string{"nft", "list", "ruleset"}},
	}
	for _, tt := range tests {
		t.Run(tt.script+" "+tt.mode, func(t *testing.T) {
			w := newWorld(t, worldOptions{intercept: sniOnly})
			requireTools(t, tt.leftover[0])
			script := func(action string) {
				t.Helper()
				cmd := w.gw.command(context.Background(), "sh", "../deploy/"+tt.script, action)
				cmd.Env = append(os.Environ(), "MODE="+tt.mode, "IFACE="+gwCliIf, "PORT="+tt.port, "MARK=0x100", "LOCAL=1")
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("%s %s: %v\n%s", tt.script, action, err, out)
				}
			}
			script("add")
			t.Run("openssl allowed", func(t *testing.T) { testOpenSSLAllowed(t, w, tt.listener) })
			t.Run("openssl denied", func(t *testing.T) { testOpenSSLDenied(t, w, tt.listener) })
			script("delete")
			out, err := w.gw.command(context.Background(), tt.leftover[0], tt.leftover[1:]...).CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %v\n%s", tt.leftover, err, out)
			}
			for _, s := range []string{"REDIRECT", "TPROXY", "egressd", "tproxy to"} {
				if strings.Contains(string(out), s) {
					t.Errorf("after %s delete, %v still shows %q:\n%s", tt.script, tt.leftover, s, out)
				}
			}
			rules, _ := w.gw.command(context.Background(), "ip", "rule").CombinedOutput()
			if strings.Contains(string(rules), "lookup 100") {
				t.Errorf("after %s delete, ip rule still has the tproxy rule:\n%s", tt.script, rules)
			}
		})
	}
}
