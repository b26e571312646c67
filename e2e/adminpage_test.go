package e2e

import (
	"context"
	"crypto/tls"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// The admin page world: egressd in gw in report-only mode, an sni listener
// that cli's clients reach, the admin endpoint on gw's loopback. The
// policy has a rule that never matches (legacy-mirror: a dead rule).
const (
	adminTopName = "tracker.example.test" // denied most
	adminDead    = "legacy-mirror"
)

const adminPageConfig = `listeners:
  - {name: sni, mode: sni, address: "` + sniListenAddr + `", upstream_port: 443}
resolver: ` + resolverAddr + `
admin: {address: "` + mgmtAddr + `"}
log: {format: json}
policy:
  enforce: false
  default: deny
  rules:
    - {name: ads, action: deny, fqdn: ["*.ads.test"]}
    - {name: allowed, action: allow, fqdn: ["allowed.test"], ports: [443]}
    - {name: ` + adminDead + `, action: allow, fqdn: ["mirror.example.test"], ports: [443]}
`

// artifactsEnv names a directory the test keeps its screenshot in; by
// default it is the test's temporary directory.
const artifactsEnv = "EGRESSD_E2E_ARTIFACTS"

// TestAdminPage walks the way from report-only to enforcing. egressd runs
// report-only while Go TLS clients in cli keep connecting through its sni
// listener (a default deny the most, a deny rule, an allow rule); Debian's
// headless Chromium loads the admin page in gw meanwhile: its DOM must show
// the top denied name with the rule that would allow it and the dead rule,
// and its screenshot is kept. Then egressd suggest turns the access log into
// a config that egressd check passes, and its replay of the log says that
// nothing seen would be denied by it.
func TestAdminPage(t *testing.T) {
	requireTools(t, "chromium")
	w := newWorld(t, worldOptions{intercept: direct})
	records := maps.Clone(dnsRecords)
	records[adminTopName+"."] = []string{srvAddr}
	startDNS(t, w.gw, resolverAddr, records)
	_, log := startEgressdConfig(t, w.gw, adminPageConfig, 1)

	// Traffic until the page has been read: three connections to the top
	// name for each of the others.
	ctx, stop := context.WithCancel(context.Background())
	var traffic sync.WaitGroup
	traffic.Add(1)
	go func() {
		defer traffic.Done()
		names := []string{adminTopName, "x.ads.test", adminTopName, "allowed.test", adminTopName}
		for i := 0; ctx.Err() == nil; i++ {
			c, err := w.cli.dial("", sniListenAddr)
			if err != nil {
				t.Errorf("dial the sni listener: %v", err)
				return
			}
			greet(c, &tls.Config{ServerName: names[i%len(names)], InsecureSkipVerify: true})
			c.Close()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	defer func() { stop(); traffic.Wait() }()
	log.find(t, 0, "a connection to "+adminTopName, func(l accessLine) bool { return l.FQDN == adminTopName })
	log.find(t, 0, "a connection to allowed.test", func(l accessLine) bool { return l.FQDN == "allowed.test" })

	url := "http://" + mgmtAddr + "/"
	dom, stderr, err := chromiumIn(t, w.gw, "--dump-dom", url)
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v\n%s", url, err, stderr)
	}
	names := section(dom, "denied-names")
	first := regexp.MustCompile(`<td class="name">([^<]*)</td>`).FindStringSubmatch(names)
	if first == nil || first[1] != adminTopName {
		t.Errorf("the top denied name on the page = %v, want %s; the section:\n%s", first, adminTopName, names)
	}
	if !strings.Contains(names, `- name: "allow-`+adminTopName+`"`) || !strings.Contains(names, `fqdn: ["`+adminTopName+`"]`) {
		t.Errorf("the page lacks the rule that would allow %s:\n%s", adminTopName, names)
	}
	if dead := section(dom, "dead-rules"); !strings.Contains(dead, ">"+adminDead+"<") || strings.Contains(dead, ">allowed<") {
		t.Errorf("the dead rules section = %s, want %s and not allowed", dead, adminDead)
	}

	dir := os.Getenv(artifactsEnv)
	if dir == "" {
		dir = t.TempDir()
	}
	shot := filepath.Join(dir, "admin-page.png")
	if _, stderr, err := chromiumIn(t, w.gw, "--screenshot="+shot, "--window-size=1280,900", url); err != nil {
		t.Errorf("chromium --screenshot: %v\n%s", err, stderr)
	} else if fi, err := os.Stat(shot); err != nil || fi.Size() == 0 {
		t.Errorf("no screenshot at %s: %v", shot, err)
	} else {
		t.Logf("screenshot of the admin page: %s (%d bytes)", shot, fi.Size())
	}
	stop()
	traffic.Wait()

	t.Run("suggest", func(t *testing.T) { testSuggestFromLog(t, log) })
}

// testSuggestFromLog runs egressd suggest on the access log egressd wrote,
// checks the config it prints, and replays the log through it.
func testSuggestFromLog(t *testing.T, log *accessLog) {
	dir := t.TempDir()
	logFile, cfgFile, proposed := filepath.Join(dir, "access.log"), filepath.Join(dir, "egressd.yaml"), filepath.Join(dir, "proposed.yaml")
	var lines strings.Builder
	for _, l := range log.snapshot() {
		lines.WriteString(l.raw + "\n")
	}
	if err := os.WriteFile(logFile, []byte(lines.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgFile, []byte(adminPageConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := egressdBinary(t)
	out, err := exec.Command(bin, "suggest", "--log", logFile, "--config", cfgFile).Output()
	if err != nil {
		t.Fatalf("egressd suggest: %v", err)
	}
	if err := os.WriteFile(proposed, out, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("egressd suggest:\n%s", out)
	fqdn := regexp.MustCompile(`(?m)^ +fqdn: \[(.*)\]$`).FindAllStringSubmatch(string(out), -1)
	for _, name := range []string{adminTopName, "x.ads.test", "allowed.test"} {
		found := false
		for _, m := range fqdn {
			found = found || strings.Contains(m[1], `"`+name+`"`)
		}
		if !found {
			t.Errorf("no rule of the suggestion lists %s", name)
		}
	}
	for _, want := range []string{"listeners:", "enforce: false", `sources: ["10.99.1.2/32"]`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the suggestion lacks %q", want)
		}
	}
	if b, err := exec.Command(bin, "check", "--config", proposed).CombinedOutput(); err != nil {
		t.Errorf("egressd check of the suggestion: %v\n%s", err, b)
	}
	replay, err := exec.Command(bin, "suggest", "--log", logFile, "--against", proposed).Output()
	if err != nil {
		t.Fatalf("egressd suggest --against: %v", err)
	}
	t.Logf("egressd suggest --against:\n%s", replay)
	if !strings.Contains(string(replay), ", 0 would now be denied,") || !strings.Contains(string(replay), adminTopName+":443") {
		t.Errorf("the replay through the suggestion: want nothing denied and %s now allowed:\n%s", adminTopName, replay)
	}
}

// section returns the HTML of the page's section with that id.
func section(dom, id string) string {
	i := strings.Index(dom, `id="`+id+`"`)
	if i < 0 {
		return ""
	}
	s := dom[i:]
	if j := strings.Index(s, "</section>"); j >= 0 {
		s = s[:j]
	}
	return s
}
