package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ConfigEnv names the configuration file when -config is not given.
const ConfigEnv = "NATSMESH_CONFIG"

// Source tells where a setting's value came from.
type Source uint8

// Sources, from weakest to strongest.
const (
	FromDefault Source = iota
	FromFile
	FromEnv
	FromFlag
)

// FieldError is a bad setting, named by its key (the flag name and the
// configuration file key). Every configuration error a binary reports at
// start is one.
type FieldError struct {
	Key    string // flag name and file key, e.g. "shards"; empty for the file as a whole
	From   string // where the value came from: "-shards", "env NATSMESH_SHARDS", "runner.yaml:3", or "" for a default
	Reason string // what is wrong, e.g. "must be >= 1, got 0"
	Err    error  // the underlying error, if any
}

func (e *FieldError) Error() string {
	s := "config: " + e.Key + ": " + e.Reason
	if e.Key == "" { // the configuration file as a whole
		s = "config: " + e.Reason
	}
	if e.From != "" {
		s += " (from " + e.From + ")"
	}
	return s
}

func (e *FieldError) Unwrap() error { return e.Err }

// Spec describes one setting.
type Spec struct {
	// Name is the flag name and the configuration file key.
	Name string
	// Env is the environment variable; empty means NATSMESH_ followed by
	// Name in upper case with '-' as '_'.
	Env string
	// Usage is the flag's help; the environment variable is appended.
	Usage string
	// Secret values are never printed (-print-config, errors).
	Secret bool
}

type setting struct {
	Spec
	value  flag.Value
	def    string
	source Source
	from   string
}

// Settings is one binary's configuration: every setting has a flag, an
// environment variable and a key in a YAML configuration file (-config or
// NATSMESH_CONFIG), and the flag wins over the environment, which wins
// over the file, which wins over the default. Register the settings, then
// Parse once.
//
// An environment variable set to the empty string counts as unset, so that
// compose files can pass ${VAR} through whether or not it is defined.
type Settings struct {
	name    string
	fs      *flag.FlagSet
	list    []*setting
	byName  map[string]*setting
	checks  []func() error
	file    string
	print   bool
	showVer bool
	version string
	stdout  io.Writer
	getenv  func(string) (string, bool)
}

// NewSettings returns the settings of the binary name; flag errors and help
// go to stderr.
func NewSettings(name string, stderr io.Writer) *Settings {
	s := &Settings{
		name:   name,
		fs:     flag.NewFlagSet(name, flag.ContinueOnError),
		byName: map[string]*setting{},
		stdout: stderr,
		getenv: func(k string) (string, bool) {
			v, ok := os.LookupEnv(k)
			return v, ok && v != ""
		},
	}
	s.fs.SetOutput(stderr)
	s.fs.StringVar(&s.file, "config", "", "YAML configuration file; keys are the flag names (env "+ConfigEnv+")")
	s.fs.BoolVar(&s.print, "print-config", false, "print the resolved configuration with each value's source, then exit")
	s.fs.BoolVar(&s.showVer, "version", false, "print the version, then exit")
	s.version = Version("")
	return s
}

// FlagSet returns the underlying flag set (for Usage and Args).
func (s *Settings) FlagSet() *flag.FlagSet { return s.fs }

// SetEnv replaces the environment lookup (tests).
func (s *Settings) SetEnv(lookup func(string) (string, bool)) { s.getenv = lookup }

// SetOutput sets where -print-config writes.
func (s *Settings) SetOutput(w io.Writer) { s.stdout = w }

// Var registers a setting backed by v, whose current String is its default.
// It panics if the name is taken: that is a programming error.
func (s *Settings) Var(v flag.Value, sp Spec) {
	if _, dup := s.byName[sp.Name]; dup || sp.Name == "config" || sp.Name == "print-config" {
		panic("cli: setting " + sp.Name + " registered twice")
	}
	if sp.Env == "" {
		sp.Env = "NATSMESH_" + strings.ToUpper(strings.ReplaceAll(sp.Name, "-", "_"))
	}
	st := &setting{Spec: sp, value: v, def: v.String()}
	s.list = append(s.list, st)
	s.byName[sp.Name] = st
	s.fs.Var(v, sp.Name, sp.Usage+" (env "+sp.Env+")")
}

// String registers a string setting.
func (s *Settings) String(p *string, def string, sp Spec) {
	*p = def
	s.Var((*stringValue)(p), sp)
}

// Int registers an integer setting.
func (s *Settings) Int(p *int, def int, sp Spec) {
	*p = def
	s.Var(newIntValue(p), sp)
}

// Bool registers a boolean setting.
func (s *Settings) Bool(p *bool, def bool, sp Spec) {
	*p = def
	s.Var((*boolValue)(p), sp)
}

// Duration registers a duration setting ("1m30s").
func (s *Settings) Duration(p *time.Duration, def time.Duration, sp Spec) {
	*p = def
	s.Var((*durationValue)(p), sp)
}

// Check adds a validation run by Parse after every value is loaded. It
// returns nil or an error from Bad.
func (s *Settings) Check(f func() error) { s.checks = append(s.checks, f) }

// Bad returns the error for a setting whose value is wrong; Parse adds
// where the value came from.
func Bad(key, format string, args ...any) error {
	return &FieldError{Key: key, Reason: fmt.Sprintf(format, args...)}
}

// Source reports where a setting's value came from.
func (s *Settings) Source(name string) Source {
	if st, ok := s.byName[name]; ok {
		return st.source
	}
	return FromDefault
}

// IsSet reports whether a setting was given by flag, environment or file.
func (s *Settings) IsSet(name string) bool { return s.Source(name) != FromDefault }

// ErrPrinted is returned by Parse after -print-config printed the
// configuration, or -version the version: the binary should exit 0.
var ErrPrinted = errors.New("cli: configuration printed")

// Parse reads flags from args, then the environment and the configuration
// file for every setting no flag gave, then runs the checks. Errors name
// the bad setting (a *FieldError) except flag syntax errors, which the flag
// package reports with usage. It returns flag.ErrHelp for -h and ErrPrinted
// after -print-config.
func (s *Settings) Parse(args []string) error {
	if err := s.fs.Parse(args); err != nil {
		return err
	}
	if s.showVer {
		fmt.Fprintf(s.stdout, "%s %s %s\n", s.name, s.version, runtime.Version())
		return ErrPrinted
	}
	byFlag := map[string]bool{}
	s.fs.Visit(func(f *flag.Flag) { byFlag[f.Name] = true })
	for _, st := range s.list {
		if byFlag[st.Name] {
			st.source, st.from = FromFlag, "-"+st.Name
		}
	}
	if !byFlag["config"] {
		if v, ok := s.getenv(ConfigEnv); ok {
			s.file = v
		}
	}
	var fileVals map[string]fileValue
	if s.file != "" {
		var err error
		if fileVals, err = s.readFile(s.file); err != nil {
			return err
		}
	}
	for _, st := range s.list {
		if st.source == FromFlag {
			continue
		}
		if v, ok := s.getenv(st.Env); ok {
			if err := s.set(st, v, FromEnv, "env "+st.Env); err != nil {
				return err
			}
			continue
		}
		if fv, ok := fileVals[st.Name]; ok {
			if err := s.set(st, fv.value, FromFile, fv.where); err != nil {
				return err
			}
		}
	}
	for _, check := range s.checks {
		if err := check(); err != nil {
			return s.annotate(err)
		}
	}
	if s.print {
		s.Print(s.stdout)
		return ErrPrinted
	}
	return nil
}

func (s *Settings) set(st *setting, v string, src Source, from string) error {
	if err := st.value.Set(v); err != nil {
		shown := fmt.Sprintf("%q", v)
		if st.Secret {
			shown = "(secret)"
		}
		return &FieldError{Key: st.Name, From: from, Reason: fmt.Sprintf("invalid value %s: %v", shown, err), Err: err}
	}
	st.source, st.from = src, from
	return nil
}

// annotate adds the source of the named setting to a *FieldError.
func (s *Settings) annotate(err error) error {
	var fe *FieldError
	if errors.As(err, &fe) && fe.From == "" {
		if st, ok := s.byName[fe.Key]; ok {
			fe.From = st.from
		}
	}
	return err
}

// Print writes the resolved configuration as YAML a -config file accepts,
// each value commented with its source; secrets are elided.
func (s *Settings) Print(w io.Writer) {
	fmt.Fprintf(w, "# %s configuration\n", s.name)
	for _, st := range s.list {
		v := st.value.String()
		if st.Secret && v != "" {
			v = "(secret)"
		}
		b, _ := yaml.Marshal(map[string]string{st.Name: v})
		from := st.from
		if from == "" {
			from = "default"
		}
		fmt.Fprintf(w, "%s  # %s\n", strings.TrimSuffix(string(b), "\n"), from)
	}
}

// Keys returns the registered settings sorted by name (documentation).
func (s *Settings) Keys() []Spec {
	out := make([]Spec, 0, len(s.list))
	for _, st := range s.list {
		out = append(out, st.Spec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Default returns the default value of a setting as text.
func (s *Settings) Default(name string) string { return s.byName[name].def }

type fileValue struct {
	value string
	where string
}

// readFile loads a YAML mapping of setting names to values. Scalars are
// taken as text and parsed like the flag; a list becomes a comma-separated
// value and a mapping "k=v,..." (for settings such as entity-groups).
// Unknown and repeated keys are errors, so that a typo never silently
// leaves a setting at its default.
func (s *Settings) readFile(path string) (map[string]fileValue, error) {
	bad := func(where, format string, args ...any) error {
		return &FieldError{From: where, Reason: fmt.Sprintf(format, args...)}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &FieldError{Reason: err.Error(), Err: err}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, bad(path, "%v", err)
	}
	if len(doc.Content) == 0 {
		return nil, nil // an empty file sets nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, bad(fmt.Sprintf("%s:%d", path, root.Line), "want a mapping of setting names to values")
	}
	out := map[string]fileValue{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		where := fmt.Sprintf("%s:%d", path, k.Line)
		st, ok := s.byName[k.Value]
		if !ok {
			return nil, bad(where, "unknown key %q%s", k.Value, s.suggest(k.Value))
		}
		if _, dup := out[k.Value]; dup {
			return nil, &FieldError{Key: st.Name, From: where, Reason: "set twice"}
		}
		text, err := nodeText(v)
		if err != nil {
			return nil, &FieldError{Key: st.Name, From: where, Reason: err.Error()}
		}
		out[k.Value] = fileValue{value: text, where: where}
	}
	return out, nil
}

func (s *Settings) suggest(key string) string {
	var best string
	bestD := 3
	for _, st := range s.list {
		if d := editDistance(key, st.Name); d < bestD {
			best, bestD = st.Name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func nodeText(n *yaml.Node) (string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "", nil
		}
		return n.Value, nil
	case yaml.SequenceNode:
		parts := make([]string, 0, len(n.Content))
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				return "", errors.New("want a list of plain values")
			}
			parts = append(parts, c.Value)
		}
		return strings.Join(parts, ","), nil
	case yaml.MappingNode:
		parts := make([]string, 0, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || v.Kind != yaml.ScalarNode {
				return "", errors.New("want a mapping of plain values")
			}
			parts = append(parts, k.Value+"="+v.Value)
		}
		return strings.Join(parts, ","), nil
	}
	return "", errors.New("want a value, a list or a mapping")
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }

type intValue struct{ p *int }

func newIntValue(p *int) *intValue { return &intValue{p} }

func (v *intValue) Set(s string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 0, strconv.IntSize)
	if err != nil {
		return errors.New("want an integer")
	}
	*v.p = int(n)
	return nil
}

func (v *intValue) String() string {
	if v == nil || v.p == nil {
		return "0"
	}
	return fmt.Sprint(*v.p)
}

type boolValue bool

func (v *boolValue) Set(s string) error {
	switch strings.ToLower(s) {
	case "true", "1", "yes", "on":
		*v = true
	case "false", "0", "no", "off":
		*v = false
	default:
		return errors.New("want true or false")
	}
	return nil
}

func (v *boolValue) String() string   { return fmt.Sprint(bool(*v)) }
func (v *boolValue) IsBoolFlag() bool { return true }

type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return errors.New("want a duration such as 500ms, 10s or 1m")
	}
	*v = durationValue(d)
	return nil
}

func (v *durationValue) String() string { return time.Duration(*v).String() }

// Exit ends a binary's main with run's result: status 0 for nil, -h and
// -print-config, else the error after "name: " on stderr and status 1.
func Exit(name string, err error) {
	if err == nil || errors.Is(err, flag.ErrHelp) || errors.Is(err, ErrPrinted) {
		os.Exit(0)
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	os.Exit(1)
}
