// Package deploy holds no code: it tests the deployment files next to it,
// so that a unit or manifest that no longer matches the program fails CI.
package deploy

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/egressd/egressd/internal/config"
)

func unavailable(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and %s", msg)
	}
	t.Skip(msg)
}

// TestSystemdUnit runs systemd-analyze verify on the unit, with the binary
// path pointed at an executable that exists here.
func TestSystemdUnit(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		unavailable(t, "systemd-analyze is not installed")
	}
	unit, err := os.ReadFile("systemd/egressd.service")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "egressd.service")
	os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/egressd"), []byte(exe)), 0o644)
	out, err := exec.Command("systemd-analyze", "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Only the two capabilities the issue allows.
	for _, key := range []string{"AmbientCapabilities=", "CapabilityBoundingSet="} {
		want := key + "CAP_NET_ADMIN CAP_NET_BIND_SERVICE"
		if !bytes.Contains(unit, []byte("\n"+want+"\n")) {
			t.Errorf("unit lacks %q", want)
		}
	}
}

// object is the part of a Kubernetes object these checks read.
type object struct {
	Kind     string
	Metadata struct{ Name string }
	Data     map[string]string
	Spec     struct {
		Template struct {
			Spec podSpec
		}
	}
}

type podSpec struct {
	TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
	Containers                    []struct {
		Name           string
		Args           []string
		ReadinessProbe probe `yaml:"readinessProbe"`
		LivenessProbe  probe `yaml:"livenessProbe"`
		Ports          []struct {
			Name          string
			ContainerPort int `yaml:"containerPort"`
		}
		VolumeMounts []struct {
			Name      string
			MountPath string `yaml:"mountPath"`
			SubPath   string `yaml:"subPath"`
		} `yaml:"volumeMounts"`
	}
	Volumes []struct {
		Name      string
		ConfigMap struct{ Name string } `yaml:"configMap"`
	}
}

type probe struct {
	HTTPGet struct {
		Host string
		Path string
		Port yaml.Node
	} `yaml:"httpGet"`
}

// TestKubernetesManifests checks each workload against the ConfigMap it
// mounts: the config is valid, mounted as a directory (so reload sees
// updates), the probes ask /readyz and /healthz on the admin port, and the
// pod's grace period outlasts shutdown_grace.
func TestKubernetesManifests(t *testing.T) {
	files, _ := filepath.Glob("kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests")
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			data, _ := os.ReadFile(f)
			var objs []object
			dec := yaml.NewDecoder(bytes.NewReader(data))
			for {
				var o object
				if err := dec.Decode(&o); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				objs = append(objs, o)
			}
			configs := map[string]*config.Config{}
			for _, o := range objs {
				if o.Kind != "ConfigMap" || o.Data["egressd.yaml"] == "" {
					continue
				}
				c, err := config.Parse(f+": ConfigMap "+o.Metadata.Name, []byte(o.Data["egressd.yaml"]))
				if err != nil {
					t.Errorf("%v", err)
					continue
				}
				configs[o.Metadata.Name] = c
			}
			workloads := 0
			for _, o := range objs {
				if o.Kind != "Deployment" && o.Kind != "DaemonSet" {
					continue
				}
				workloads++
				checkWorkload(t, o, configs)
			}
			if workloads == 0 {
				t.Errorf("%s has no Deployment or DaemonSet", f)
			}
		})
	}
}

func checkWorkload(t *testing.T, o object, configs map[string]*config.Config) {
	ps := o.Spec.Template.Spec
	for _, ct := range ps.Containers {
		if ct.Name != "egressd" {
			continue
		}
		var cfgPath string
		for i, a := range ct.Args {
			if a == "--config" && i+1 < len(ct.Args) {
				cfgPath = ct.Args[i+1]
			}
		}
		var cfg *config.Config
		for _, m := range ct.VolumeMounts {
			if !strings.HasPrefix(cfgPath, m.MountPath+"/") {
				continue
			}
			if m.SubPath != "" {
				t.Errorf("%s: config mounted with subPath: updates never reach the pod", o.Metadata.Name)
			}
			for _, v := range ps.Volumes {
				if v.Name == m.Name {
					cfg = configs[v.ConfigMap.Name]
				}
			}
		}
		if cfg == nil {
			t.Fatalf("%s: --config %q is not in a mounted ConfigMap of this file", o.Metadata.Name, cfgPath)
		}
		if !cfg.Admin.Address.IsValid() {
			t.Fatalf("%s: config has no admin endpoint for the probes", o.Metadata.Name)
		}
		for _, p := range []struct {
			name, path string
			pr         probe
		}{{"readinessProbe", "/readyz", ct.ReadinessProbe}, {"livenessProbe", "/healthz", ct.LivenessProbe}} {
			if p.pr.HTTPGet.Path != p.path {
				t.Errorf("%s: %s path %q, want %s", o.Metadata.Name, p.name, p.pr.HTTPGet.Path, p.path)
			}
			port := p.pr.HTTPGet.Port.Value
			for _, cp := range ct.Ports {
				if cp.Name == port {
					port = itoa(cp.ContainerPort)
				}
			}
			if port != itoa(int(cfg.Admin.Address.Port())) {
				t.Errorf("%s: %s port %s, admin listens on %s", o.Metadata.Name, p.name, port, cfg.Admin.Address)
			}
			host := p.pr.HTTPGet.Host
			if a := cfg.Admin.Address.Addr(); a.IsLoopback() && host != "127.0.0.1" {
				t.Errorf("%s: %s goes to the pod IP (host %q), admin listens on loopback only", o.Metadata.Name, p.name, host)
			} else if !a.IsLoopback() && a != netip.IPv4Unspecified() && a != netip.IPv6Unspecified() {
				t.Errorf("%s: admin address %s is neither loopback nor all addresses", o.Metadata.Name, a)
			}
		}
		if float64(ps.TerminationGracePeriodSeconds) <= (cfg.ShutdownDelay + cfg.ShutdownGrace).Seconds() {
			t.Errorf("%s: terminationGracePeriodSeconds %d does not outlast shutdown_delay %s + shutdown_grace %s", o.Metadata.Name, ps.TerminationGracePeriodSeconds, cfg.ShutdownDelay, cfg.ShutdownGrace)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
