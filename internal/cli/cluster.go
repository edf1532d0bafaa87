package cli

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/natsmesh/natsmesh/mesh"
)

// Parts selects the groups of mesh settings a binary takes.
type Parts uint8

const (
	// Cluster: what every process of one cluster must agree on (prefix,
	// shards, shard-groups, entity-groups).
	Cluster Parts = 1 << iota
	// Coordination: leases, assignment and storage (runners and shard
	// managers).
	Coordination
	// Entities: entity defaults and persisted messages (runners).
	Entities
	// Calls: the client side (anything that calls entities).
	Calls
	// Runner: this runner's identity (id, weight, standalone).
	Runner
)

// binding ties a setting to a field of mesh.Config.
type binding struct {
	parts Parts
	key   string
	field string
	usage string
	env   string // "" = derived from key
}

// meshBindings lists every mesh.Config field a binary can set. Keys are the
// field names in kebab case where that reads well, so docs/operations.md's
// timing table and @effect/cluster's names stay recognisable.
var meshBindings = []binding{
	{Cluster, "prefix", "Prefix", "subject prefix of the cluster; every process of a cluster must agree", ""},
	{Cluster, "shards", "ShardsPerGroup", "shards per shard group; every process of a cluster must agree", ""},
	{Cluster, "shard-groups", "ShardGroups", "shard groups, comma-separated; the first is the default group", ""},
	{Cluster, "entity-groups", "EntityGroups", "shard group of entity types, as Type=group,... (others use the first group)", ""},

	{Coordination, "replicas", "StorageReplicas", "replicas of the KV buckets and streams: 1, or 3 on a NATS cluster", ""},
	{Coordination, "storage", "Storage", "storage of the KV buckets and streams when created: file, or memory (tests; lost when NATS restarts)", ""},
	{Coordination, "shard-lock-expiration", "ShardLockExpiration", "lease TTL of shards and registrations, whole seconds (2s with -fast-failover)", ""},
	{Coordination, "shard-lock-refresh-interval", "ShardLockRefreshInterval", "lease renewal period (500ms with -fast-failover)", ""},
	{Coordination, "shard-lock-margin", "ShardLockMargin", "a holder stops serving this long before its lease could expire (500ms with -fast-failover)", ""},
	{Coordination, "refresh-assignments-interval", "RefreshAssignmentsInterval", "periodic re-read of assignments and lease retry (500ms with -fast-failover)", ""},
	{Coordination, "runner-health-check-timeout", "RunnerHealthCheckTimeout", "ping confirming a silent runner is gone (250ms with -fast-failover)", ""},

	{Entities, "entity-mailbox-capacity", "EntityMailboxCapacity", "default bounded mailbox per entity; past it calls fail with MailboxFull", ""},
	{Entities, "entity-max-idle-time", "EntityMaxIdleTime", "default idle time before an entity is passivated", ""},
	{Entities, "entity-termination-timeout", "EntityTerminationTimeout", "bound on finalizers during passivation and hand-off", ""},
	{Entities, "expose-defect-stacks", "ExposeDefectStacks", "send a panicking handler's stack to callers (turn off for untrusted callers)", ""},
	{Entities, "stream-ack-timeout", "StreamAckTimeout", "end a stream whose caller acknowledged nothing for this long", ""},
	{Entities, "persist-reply-retention", "PersistReplyRetention", "how long a persisted message's reply is kept for re-sends with the same id", ""},
	{Entities, "persist-dedup-window", "PersistDedupWindow", "stream duplicate window for persisted messages", ""},
	{Entities, "persist-max-attempts", "PersistMaxAttempts", "attempts of a persisted message before it is dead-lettered", ""},
	{Entities, "persist-retry-backoff", "PersistRetryBackoff", "first wait between attempts of a persisted message (doubling)", ""},
	{Entities, "persist-retry-backoff-max", "PersistRetryBackoffMax", "longest wait between attempts of a persisted message", ""},
	{Entities, "persist-max-in-flight", "PersistMaxInFlight", "persisted messages a runner's consumer hands out before acknowledgements", ""},
	{Calls, "reply-prefixes", "ReplyPrefixes", "subject prefixes runners publish replies to, comma-separated (others are refused)", ""},

	{Calls, "call-timeout", "CallTimeout", "time limit of a call whose context has none", ""},
	{Calls, "retry-backoff", "RetryBackoff", "first wait before retrying a call that found no runner (doubling)", ""},
	{Calls, "retry-backoff-max", "RetryBackoffMax", "longest wait between retries of a call", ""},
	{Calls, "codec", "Codec", "payload codec of Go clients: msgpack or json", ""},

	{Runner, "id", "RunnerID", "runner id, unique per process incarnation (default: generated)", "NATSMESH_RUNNER_ID"},
	{Runner, "weight", "RunnerWeight", "share of shards relative to other runners", "NATSMESH_RUNNER_WEIGHT"},
	{Runner, "standalone", "Standalone", "serve every shard with no shard manager (one runner only; refused where a cluster of the prefix is live)", ""},
}

// fastFields are the fields -fast-failover presets; an explicit setting of
// one of them still wins.
var fastFields = []string{"ShardLockExpiration", "ShardLockRefreshInterval", "ShardLockMargin", "RefreshAssignmentsInterval", "RunnerHealthCheckTimeout"}

// Mesh holds the settings that make a mesh.Config.
type Mesh struct {
	s     *Settings
	parts Parts
	cfg   mesh.Config
	fast  bool
	keys  map[string]string // mesh.Config field -> setting key
}

// RegisterMesh adds the chosen groups of mesh settings to s, with the
// defaults of mesh.DefaultConfig.
func RegisterMesh(s *Settings, parts Parts) *Mesh {
	m := &Mesh{s: s, parts: parts, cfg: mesh.DefaultConfig(), keys: map[string]string{}}
	cv := reflect.ValueOf(&m.cfg).Elem()
	for _, b := range meshBindings {
		if b.parts&parts == 0 {
			continue
		}
		f := cv.FieldByName(b.field)
		if !f.IsValid() {
			panic("cli: mesh.Config has no field " + b.field)
		}
		s.Var(&fieldValue{f}, Spec{Name: b.key, Env: b.env, Usage: b.usage})
		m.keys[b.field] = b.key
		if b.key == "replicas" {
			s.Bool(&m.fast, false, Spec{Name: "fast-failover", Usage: "2 s leases renewed every 500 ms, for one NATS server (see docs/operations.md)"})
		}
	}
	return m
}

// Config returns the mesh configuration, validated; a bad value is reported
// as a *FieldError naming its setting. Set Logger, RunnerID and the like on
// the result before use, and Validate again if you change it.
func (m *Mesh) Config() (mesh.Config, error) {
	cfg := m.cfg
	if m.fast {
		fast := cfg.FastFailover()
		src, dst := reflect.ValueOf(fast), reflect.ValueOf(&cfg).Elem()
		for _, f := range fastFields {
			if !m.s.IsSet(m.keys[f]) {
				dst.FieldByName(f).Set(src.FieldByName(f))
			}
		}
	}
	if err := cfg.Validate(); err != nil {
		return cfg, m.fieldError(err)
	}
	return cfg, nil
}

// fieldError turns mesh.Config.Validate's error, which names a Config
// field, into one naming the setting.
func (m *Mesh) fieldError(err error) error {
	var fe *mesh.FieldError
	if errors.As(err, &fe) {
		field, _, _ := strings.Cut(fe.Field, "[") // EntityGroups[Type]
		if key, known := m.keys[field]; known {
			reason := m.renameFields(fe.Reason)
			e := &FieldError{Key: key, Reason: fmt.Sprintf("%s, got %v", reason, fe.Value), Err: err}
			return m.s.annotate(e)
		}
	}
	return fmt.Errorf("config: %w", err)
}

// renameFields replaces the mesh.Config field names in a message by their
// setting keys, longest first (RetryBackoffMax before RetryBackoff).
func (m *Mesh) renameFields(msg string) string {
	fields := make([]string, 0, len(m.keys))
	for f := range m.keys {
		fields = append(fields, f)
	}
	slices.SortFunc(fields, func(a, b string) int { return len(b) - len(a) })
	pairs := make([]string, 0, 2*len(fields))
	for _, f := range fields {
		pairs = append(pairs, f, m.keys[f])
	}
	return strings.NewReplacer(pairs...).Replace(msg)
}

// fieldValue is a flag.Value over a mesh.Config field.
type fieldValue struct{ v reflect.Value }

var durationType = reflect.TypeFor[time.Duration]()

func (f *fieldValue) Set(s string) error {
	switch {
	case !f.v.IsValid():
		return errors.New("unbound")
	case f.v.Type() == durationType:
		return (*durationValue)(f.v.Addr().Interface().(*time.Duration)).Set(s)
	}
	switch f.v.Kind() {
	case reflect.String:
		f.v.SetString(strings.TrimSpace(s))
	case reflect.Int:
		var n int
		if err := newIntValue(&n).Set(s); err != nil {
			return err
		}
		f.v.SetInt(int64(n))
	case reflect.Bool:
		var b bool
		if err := (*boolValue)(&b).Set(s); err != nil {
			return err
		}
		f.v.SetBool(b)
	case reflect.Slice: // []string
		var list []string
		for p := range strings.SplitSeq(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				list = append(list, p)
			}
		}
		f.v.Set(reflect.ValueOf(list))
	case reflect.Map: // map[string]string
		mp := map[string]string{}
		for p := range strings.SplitSeq(s, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			k, v, ok := strings.Cut(p, "=")
			if !ok || strings.TrimSpace(k) == "" {
				return fmt.Errorf("want Type=group pairs, got %q", p)
			}
			mp[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
		f.v.Set(reflect.ValueOf(mp))
	default:
		return fmt.Errorf("cannot set a %s", f.v.Type())
	}
	return nil
}

func (f *fieldValue) String() string {
	if f == nil || !f.v.IsValid() {
		return ""
	}
	switch f.v.Kind() {
	case reflect.Slice:
		return strings.Join(f.v.Interface().([]string), ",")
	case reflect.Map:
		mp := f.v.Interface().(map[string]string)
		parts := make([]string, 0, len(mp))
		for k, v := range mp {
			parts = append(parts, k+"="+v)
		}
		slices.Sort(parts)
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(f.v.Interface())
}

func (f *fieldValue) IsBoolFlag() bool { return f.v.IsValid() && f.v.Kind() == reflect.Bool }
