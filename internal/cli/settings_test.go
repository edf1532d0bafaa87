package cli

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/mesh"
)

// harness is a binary's settings with a fake environment.
type harness struct {
	s    *Settings
	m    *Mesh
	conn Conn
	log  Logging
	ops  Ops
	tr   Tracing
	env  map[string]string
	out  bytes.Buffer
}

func newHarness(t *testing.T, env map[string]string) *harness {
	t.Helper()
	h := &harness{env: env}
	h.s = NewSettings("test", &h.out)
	h.s.SetOutput(&h.out)
	h.s.SetEnv(func(k string) (string, bool) { v, ok := h.env[k]; return v, ok && v != "" })
	h.conn.Register(h.s)
	h.m = RegisterMesh(h.s, Cluster|Coordination|Entities|Calls|Runner)
	h.log.Register(h.s)
	h.ops.Register(h.s)
	h.tr.Register(h.s)
	return h
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Each source wins over the weaker ones, setting by setting.
func TestPrecedence(t *testing.T) {
	file := writeFile(t, "shards: 11\nprefix: fromfile\nreplicas: 3\nlog-level: warn\n")
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantShards int
		wantPrefix string
		wantSrc    Source
	}{
		{"default", nil, nil, 300, "mesh", FromDefault},
		{"file", []string{"-config", file}, nil, 11, "fromfile", FromFile},
		{"file by env", nil, map[string]string{ConfigEnv: file}, 11, "fromfile", FromFile},
		{"env over file", []string{"-config", file}, map[string]string{"NATSMESH_SHARDS": "12"}, 12, "fromfile", FromEnv},
		{"flag over env", []string{"-config", file, "-shards", "13"}, map[string]string{"NATSMESH_SHARDS": "12"}, 13, "fromfile", FromFlag},
		{"empty env is unset", []string{"-config", file}, map[string]string{"NATSMESH_SHARDS": ""}, 11, "fromfile", FromFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.env)
			if err := h.s.Parse(tt.args); err != nil {
				t.Fatalf("Parse(%v) = %v", tt.args, err)
			}
			cfg, err := h.m.Config()
			if err != nil {
				t.Fatalf("Config() = %v", err)
			}
			if cfg.ShardsPerGroup != tt.wantShards || cfg.Prefix != tt.wantPrefix {
				t.Fatalf("shards, prefix = %d, %q, want %d, %q", cfg.ShardsPerGroup, cfg.Prefix, tt.wantShards, tt.wantPrefix)
			}
			if got := h.s.Source("shards"); got != tt.wantSrc {
				t.Fatalf("Source(shards) = %v, want %v", got, tt.wantSrc)
			}
		})
	}
}

// Every kind of value reaches mesh.Config, from the file's lists and
// mappings too.
func TestValuesReachConfig(t *testing.T) {
	file := writeFile(t, `
shard-groups: [default, big]
entity-groups: {Account: big}
expose-defect-stacks: false
entity-max-idle-time: 90s
weight: 3
id: r-7
codec: json
`)
	h := newHarness(t, map[string]string{"NATS_URL": "nats://a:4222,nats://b:4222", "NATSMESH_STANDALONE": "true"})
	if err := h.s.Parse([]string{"-config", file}); err != nil {
		t.Fatal(err)
	}
	cfg, err := h.m.Config()
	if err != nil {
		t.Fatal(err)
	}
	want := mesh.DefaultConfig()
	want.ShardGroups = []string{"default", "big"}
	want.EntityGroups = map[string]string{"Account": "big"}
	want.ExposeDefectStacks = false
	want.EntityMaxIdleTime = 90 * time.Second
	want.RunnerWeight, want.RunnerID, want.Codec, want.Standalone = 3, "r-7", "json", true
	if got, w := pretty(cfg), pretty(want); got != w {
		t.Fatalf("Config() =\n%s\nwant\n%s", got, w)
	}
	if h.conn.URL != "nats://a:4222,nats://b:4222" {
		t.Fatalf("URL = %q", h.conn.URL)
	}
}

func pretty(c mesh.Config) string {
	var b strings.Builder
	for _, k := range []any{c.Prefix, c.ShardsPerGroup, c.ShardGroups, c.EntityGroups, c.ExposeDefectStacks, c.EntityMaxIdleTime, c.RunnerWeight, c.RunnerID, c.Codec, c.Standalone, c.ShardLockExpiration, c.CallTimeout} {
		b.WriteString(strings.TrimSpace(strings.ReplaceAll(sprint(k), "\n", " ")) + "\n")
	}
	return b.String()
}

// -fast-failover presets the lease timings; a timing set explicitly wins.
func TestFastFailover(t *testing.T) {
	h := newHarness(t, map[string]string{"NATSMESH_SHARD_LOCK_EXPIRATION": "3s"})
	if err := h.s.Parse([]string{"-fast-failover"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := h.m.Config()
	if err != nil {
		t.Fatal(err)
	}
	fast := mesh.DefaultConfig().FastFailover()
	if cfg.ShardLockExpiration != 3*time.Second || cfg.ShardLockRefreshInterval != fast.ShardLockRefreshInterval || cfg.ShardLockMargin != fast.ShardLockMargin {
		t.Fatalf("timings = %v %v %v", cfg.ShardLockExpiration, cfg.ShardLockRefreshInterval, cfg.ShardLockMargin)
	}
}

// Errors name the setting and where its value came from.
func TestErrorsNameTheSetting(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string
		want string
	}{
		{"mesh range by flag", []string{"-shards", "0"}, nil, "", "config: shards: want 1..1048576, got 0 (from -shards)"},
		{"mesh range by env", nil, map[string]string{"NATSMESH_REPLICAS": "9"}, "", "config: replicas: want 1 to 5, got 9 (from env NATSMESH_REPLICAS)"},
		{"mesh token", []string{"-prefix", "a.b"}, nil, "", "config: prefix: want [A-Za-z0-9_-]{1,64}, got a.b (from -prefix)"},
		{"mesh cross-field", []string{"-shard-lock-margin", "40s"}, nil, "", "config: shard-lock-margin: want 0 < margin < shard-lock-expiration, got 40s"},
		{"entity group", []string{"-entity-groups", "A=nope"}, nil, "", "config: entity-groups: not in shard-groups, got nope"},
		{"codec", nil, map[string]string{"NATSMESH_CODEC": "xml"}, "", "config: codec: want msgpack or json, got xml (from env NATSMESH_CODEC)"},
		{"bad int in env", nil, map[string]string{"NATSMESH_SHARDS": "many"}, "", `config: shards: invalid value "many": want an integer (from env NATSMESH_SHARDS)`},
		{"bad duration in file", nil, nil, "call-timeout: 10\n", `config: call-timeout: invalid value "10": want a duration such as 500ms, 10s or 1m (from `},
		{"unknown key", nil, nil, "prefix: x\nshard: 3\n", `config: unknown key "shard" (did you mean "shards"?)`},
		{"repeated key", nil, nil, "shards: 3\nshards: 4\n", "config: shards: set twice"},
		{"not a mapping", nil, nil, "- a\n- b\n", "config: want a mapping"},
		{"log level", []string{"-log-level", "loud"}, nil, "", `config: log-level: want debug, info, warn or error, got "loud" (from -log-level)`},
		{"log format", nil, nil, "log-format: xml\n", `config: log-format: want text or json, got "xml"`},
		{"http", []string{"-http", "8080"}, nil, "", `config: http: want host:port or :port`},
		{"trace exporter", nil, map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, "", `config: trace-exporter: want none or otlp, got "zipkin" (from env OTEL_TRACES_EXPORTER)`},
		{"trace protocol", []string{"-trace-protocol", "udp"}, nil, "", `config: trace-protocol: want grpc or http/protobuf`},
		{"exclusive auth", []string{"-token", "x", "-user", "u"}, nil, "", "config: creds: creds, nkey, user and token are exclusive"},
		{"password alone", nil, map[string]string{"NATS_PASSWORD": "p"}, "", "config: password: password needs user"},
		{"missing creds file", []string{"-creds", "/does/not/exist"}, nil, "", "config: creds: stat /does/not/exist"},
		{"missing config file", []string{"-config", "/does/not/exist.yaml"}, nil, "", "config: open /does/not/exist.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.env)
			args := tt.args
			if tt.file != "" {
				args = append([]string{"-config", writeFile(t, tt.file)}, args...)
			}
			err := h.s.Parse(args)
			if err == nil {
				_, err = h.m.Config()
			}
			var fe *FieldError
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.As(err, &fe) {
				t.Fatalf("Parse(%v) = %v, want a *FieldError containing %q", args, err, tt.want)
			}
		})
	}
}

// A secret given in a bad form is never echoed.
func TestSecretsNotEchoed(t *testing.T) {
	h := newHarness(t, map[string]string{"NATS_TOKEN": "s3cret", "NATSMESH_SHARDS": "7"})
	if err := h.s.Parse([]string{"-print-config"}); !errors.Is(err, ErrPrinted) {
		t.Fatalf("Parse(-print-config) = %v, want ErrPrinted", err)
	}
	out := h.out.String()
	if strings.Contains(out, "s3cret") || !strings.Contains(out, "token: (secret)  # env NATS_TOKEN") || !strings.Contains(out, `shards: "7"  # env NATSMESH_SHARDS`) {
		t.Fatalf("-print-config printed:\n%s", out)
	}
	// What -print-config prints is a configuration file the binary accepts.
	h2 := newHarness(t, nil)
	printed := strings.ReplaceAll(out, "(secret)", "other")
	if err := h2.s.Parse([]string{"-config", writeFile(t, printed)}); err != nil {
		t.Fatalf("Parse(printed config) = %v\n%s", err, printed)
	}
	if cfg, err := h2.m.Config(); err != nil || cfg.ShardsPerGroup != 7 {
		t.Fatalf("printed config read back: %v, %v", cfg.ShardsPerGroup, err)
	}
}

// Every mesh.Config check maps to a setting: the message format Mesh reads
// the field name from is pinned here.
func TestEveryMeshErrorNamesASetting(t *testing.T) {
	for _, b := range meshBindings {
		if b.field == "Standalone" || b.field == "ExposeDefectStacks" {
			continue // booleans cannot be invalid
		}
		t.Run(b.key, func(t *testing.T) {
			h := newHarness(t, nil)
			bad := map[string]string{"prefix": "a b", "id": "a b", "codec": "x", "shard-groups": "a,a", "entity-groups": "A=b", "reply-prefixes": "_INBOX.>"}[b.key]
			if bad == "" {
				bad = "0"
				if _, isDur := h.m.cfgField(b.field).Interface().(time.Duration); isDur {
					bad = "0s"
				}
			}
			if err := h.s.Parse([]string{"-" + b.key, bad}); err != nil {
				t.Fatalf("Parse = %v", err)
			}
			_, err := h.m.Config()
			var fe *FieldError
			key := b.key
			if base, ok := strings.CutSuffix(key, "-max"); ok {
				key = base // mesh checks a lower and an upper bound as one field
			}
			if !errors.As(err, &fe) || fe.Key != key || !errors.Is(err, mesh.ErrInvalidOption) {
				t.Fatalf("-%s %s: Config() = %v, want a *FieldError for %s wrapping mesh.ErrInvalidOption", b.key, bad, err, b.key)
			}
		})
	}
}

func (m *Mesh) cfgField(name string) reflect.Value { return reflect.ValueOf(m.cfg).FieldByName(name) }

func sprint(v any) string { return fmt.Sprint(v) }

// docs/configuration.md has a row for every shared setting.
func TestSettingsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, nil)
	for _, sp := range h.s.Keys() {
		row := fmt.Sprintf("| `-%s` | `%s` | `%s` |", sp.Name, sp.Env, sp.Name)
		if !strings.Contains(string(doc), row) {
			t.Errorf("docs/configuration.md lacks the row %s", row)
		}
	}
}
