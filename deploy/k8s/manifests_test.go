// Package k8s_test checks the Kubernetes manifests of deploy/k8s without a
// cluster (none runs in CI): every file parses as YAML, every object names
// its kind and name, the kustomization lists every file, and the
// deployment choices docs/operations.md relies on hold (probes on the ops
// port, grace periods that cover a runner's hand-off, the settings every
// process must agree on, services that select pods).
package k8s_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// object is the part of a Kubernetes object the checks read.
type object struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Replicas    int            `yaml:"replicas"`
		ServiceName string         `yaml:"serviceName"`
		Selector    map[string]any `yaml:"selector"` // a Service's labels, or a workload's matchLabels
		Template    podTemplate    `yaml:"template"`
		ClusterIP   string         `yaml:"clusterIP"`
	} `yaml:"spec"`
	Resources []string `yaml:"resources"` // a Kustomization's
}

type podTemplate struct {
	Metadata struct {
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec struct {
		TerminationGracePeriodSeconds int         `yaml:"terminationGracePeriodSeconds"`
		Containers                    []container `yaml:"containers"`
	} `yaml:"spec"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	EnvFrom []struct {
		ConfigMapRef struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
	} `yaml:"envFrom"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

// load decodes every YAML document of every manifest: each must be a
// mapping, then is read into the partial typed view above.
func load(t *testing.T) (map[string][]object, []string) {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	byFile := map[string][]object{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for i := 0; ; i++ {
			var raw map[string]any
			err := dec.Decode(&raw)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			out, err := yaml.Marshal(raw)
			if err != nil {
				t.Fatal(err)
			}
			var o object
			if err := yaml.Unmarshal(out, &o); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if o.APIVersion == "" || o.Kind == "" || (o.Metadata.Name == "" && o.Kind != "Kustomization") {
				t.Fatalf("%s document %d: missing apiVersion, kind or metadata.name", f, i)
			}
			byFile[f] = append(byFile[f], o)
		}
	}
	return byFile, files
}

func TestManifests(t *testing.T) {
	byFile, files := load(t)
	var all []object
	for _, f := range files {
		all = append(all, byFile[f]...)
	}
	find := func(kind, name string) *object {
		for i := range all {
			if all[i].Kind == kind && all[i].Metadata.Name == name {
				return &all[i]
			}
		}
		t.Fatalf("no %s %s", kind, name)
		return nil
	}

	t.Run("kustomization lists every file", func(t *testing.T) {
		k := byFile["kustomization.yaml"]
		if len(k) != 1 {
			t.Fatalf("kustomization.yaml: %d documents", len(k))
		}
		want := slices.DeleteFunc(slices.Clone(files), func(f string) bool { return f == "kustomization.yaml" })
		got := slices.Sorted(slices.Values(k[0].Resources))
		if !slices.Equal(got, want) {
			t.Fatalf("kustomization resources %v, want %v", got, want)
		}
	})

	t.Run("nats", func(t *testing.T) {
		ss := find("StatefulSet", "nats")
		if ss.Spec.Replicas != 3 || ss.Spec.ServiceName != "nats-cluster" {
			t.Fatalf("nats StatefulSet: %d replicas, service %q; want 3, nats-cluster", ss.Spec.Replicas, ss.Spec.ServiceName)
		}
		if find("Service", "nats-cluster").Spec.ClusterIP != "None" {
			t.Fatal("nats-cluster must be headless (pods resolve each other as nats-N.nats-cluster)")
		}
		conf := find("ConfigMap", "nats-config").Data["nats.conf"]
		for _, want := range []string{"jetstream", "nats-0.nats-cluster:6222", "nats-1.nats-cluster:6222", "nats-2.nats-cluster:6222", "lame_duck_duration"} {
			if !strings.Contains(conf, want) {
				t.Errorf("nats.conf lacks %q", want)
			}
		}
	})

	t.Run("shared settings", func(t *testing.T) {
		cm := find("ConfigMap", "natsmesh").Data
		for k, want := range map[string]string{"NATS_URL": "nats://nats:4222", "NATSMESH_REPLICAS": "3", "NATSMESH_HTTP": ":8081"} {
			if cm[k] != want {
				t.Errorf("ConfigMap natsmesh %s = %q, want %q", k, cm[k], want)
			}
		}
		// Every variable is a setting each binary reads, and its value is
		// valid: -print-config names each one's source.
		bin := t.TempDir()
		build := exec.Command("go", "build", "-o", bin+"/", "../../cmd/runner", "../../cmd/shardmgr", "../../cmd/gateway")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build: %v\n%s", err, out)
		}
		env := []string{"PATH=" + os.Getenv("PATH")}
		for k, v := range cm {
			env = append(env, k+"="+v)
		}
		for _, b := range []string{"runner", "shardmgr", "gateway"} {
			cmd := exec.Command(filepath.Join(bin, b), "-print-config")
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s -print-config with the ConfigMap: %v\n%s", b, err, out)
			}
			for k := range cm {
				if !strings.Contains(string(out), "# env "+k+"\n") {
					t.Errorf("%s does not read %s from the ConfigMap:\n%s", b, k, out)
				}
			}
		}
	})

	// The natsmesh workloads: probes on the ops port, the shared settings,
	// a grace period that covers what SIGTERM starts.
	for _, tt := range []struct {
		name  string
		grace int // at least
	}{
		{"shardmgr", 10},
		{"runner", 15 + 15}, // EntityTerminationTimeout plus hand-off
		{"gateway", 5 + 30}, // -shutdown-delay plus -drain
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := find("Deployment", tt.name)
			pod := d.Spec.Template
			if g := pod.Spec.TerminationGracePeriodSeconds; g < tt.grace {
				t.Errorf("terminationGracePeriodSeconds %d, want >= %d", g, tt.grace)
			}
			if len(pod.Spec.Containers) != 1 {
				t.Fatalf("%d containers, want 1", len(pod.Spec.Containers))
			}
			c := pod.Spec.Containers[0]
			if len(c.Command) == 0 || c.Command[0] != "/bin/"+tt.name || c.Image == "" {
				t.Errorf("command %v image %q, want /bin/%s", c.Command, c.Image, tt.name)
			}
			if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef.Name != "natsmesh" {
				t.Errorf("envFrom %+v, want the natsmesh ConfigMap", c.EnvFrom)
			}
			var ops int
			for _, p := range c.Ports {
				if p.Name == "ops" {
					ops = p.ContainerPort
				}
			}
			if ops != 8081 {
				t.Errorf("ops port %d, want 8081 (NATSMESH_HTTP)", ops)
			}
			for _, p := range []struct {
				probe *probe
				path  string
			}{{c.ReadinessProbe, "/readyz"}, {c.LivenessProbe, "/healthz"}} {
				if p.probe == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port != "ops" {
					t.Errorf("probe %+v, want GET %s on ops", p.probe, p.path)
				}
			}
			sel, _ := d.Spec.Selector["matchLabels"].(map[string]any)
			for k, v := range sel {
				if pod.Metadata.Labels[k] != v {
					t.Errorf("selector %s=%v does not match the pod labels %v", k, v, pod.Metadata.Labels)
				}
			}
		})
	}

	t.Run("services select pods", func(t *testing.T) {
		for _, s := range all {
			if s.Kind != "Service" {
				continue
			}
			matched := false
			for _, w := range all {
				if w.Kind != "Deployment" && w.Kind != "StatefulSet" {
					continue
				}
				ok := len(s.Spec.Selector) > 0
				for k, v := range s.Spec.Selector {
					if w.Spec.Template.Metadata.Labels[k] != v {
						ok = false
					}
				}
				matched = matched || ok
			}
			if !matched {
				t.Errorf("Service %s selects no workload's pods", s.Metadata.Name)
			}
		}
	})
}
