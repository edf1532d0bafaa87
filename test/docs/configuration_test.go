// Package docs_test checks that the documentation matches the binaries:
// docs/configuration.md has a row for every setting of every binary, with
// its environment variable and default as the binary itself reports them.
package docs_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/natsmesh/natsmesh/internal/testkit/cmdtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	cmdtest.Remove()
	os.Exit(code)
}

// setting is one setting as a binary reports it: -h gives its flag and
// environment variable, -print-config its default.
type setting struct{ name, env, def string }

var (
	flagLine = regexp.MustCompile(`^  -(\S+)`)
	envOf    = regexp.MustCompile(`\(env (\S+)\)`)
	printed  = regexp.MustCompile(`^(\S+): (.*?)  # default$`)
)

func settingsOf(t *testing.T, bin string) []setting {
	t.Helper()
	var help bytes.Buffer
	cmd := exec.Command(bin, "-h")
	cmd.Stderr = &help
	_ = cmd.Run() // -h exits 0 for app's binaries, 2 for the flag package's default
	envs := map[string]string{}
	var name string
	sc := bufio.NewScanner(&help)
	for sc.Scan() {
		if m := flagLine.FindStringSubmatch(sc.Text()); m != nil {
			name = m[1]
			continue
		}
		if m := envOf.FindStringSubmatch(sc.Text()); m != nil && name != "" {
			envs[name] = m[1]
		}
	}
	out, err := exec.Command(bin, "-print-config").Output()
	if err != nil {
		t.Fatalf("%s -print-config: %v", bin, err)
	}
	var list []setting
	sc = bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := printed.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		def := strings.Trim(m[2], `"`)
		if envs[m[1]] == "" {
			t.Fatalf("%s: -h does not give the environment variable of %s", bin, m[1])
		}
		list = append(list, setting{name: m[1], env: envs[m[1]], def: def})
	}
	if len(list) < 5 {
		t.Fatalf("%s -print-config printed %d settings:\n%s", bin, len(list), out)
	}
	return list
}

func TestConfigurationDocumented(t *testing.T) {
	bins := cmdtest.Build(t, "./cmd/runner", "./cmd/shardmgr", "./cmd/gateway", "./cmd/meshctl")
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{} // "-name" -> its rows' cells
	for _, line := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(line, "| `-") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows[strings.Trim(cells[0], "`")] = append(rows[strings.Trim(cells[0], "`")], strings.Join(cells, "|"))
	}
	for _, name := range []string{"runner", "shardmgr", "gateway", "meshctl"} {
		for _, s := range settingsOf(t, filepath.Join(bins, name)) {
			want := "-" + s.name + "|`" + s.env + "`|`" + s.name + "`|"
			found := false
			for _, row := range rows["-"+s.name] {
				rest, ok := strings.CutPrefix(strings.Replace(row, "`-"+s.name+"`", "-"+s.name, 1), want)
				if !ok {
					continue
				}
				def, _, _ := strings.Cut(rest, "|")
				if def == s.def || (s.def != "" && strings.Contains(def, s.def)) {
					found = true
				}
			}
			if !found {
				t.Errorf("docs/configuration.md has no row for %s's -%s with env %s and default %q (rows: %q)", name, s.name, s.env, s.def, rows["-"+s.name])
			}
		}
	}
}

// The error messages docs/configuration.md shows are the runner's.
func TestConfigurationErrorsAsShown(t *testing.T) {
	runner := filepath.Join(cmdtest.Build(t, "./cmd/runner", "./cmd/shardmgr", "./cmd/gateway", "./cmd/meshctl"), "runner")
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, _ := strings.Cut(string(doc), "with status 1 and a message naming the setting and where the value came\nfrom:\n\n```\n")
	block, _, ok := strings.Cut(after, "```")
	if !ok {
		t.Fatal("docs/configuration.md: no block of error messages")
	}
	shown := strings.Split(strings.TrimSpace(block), "\n")
	dir := t.TempDir()
	// Line 3 has the typo, line 7 the bad duration, as in the messages.
	files := map[string]string{
		"typo":     "prefix: mesh\nreplicas: 1\nshard: 300\n",
		"duration": "prefix: mesh\nreplicas: 1\nshards: 300\nhttp: \"\"\nlog-format: text\nlog-level: info\ncall-timeout: 10\n",
	}
	run := func(env []string, args ...string) string {
		cmd := exec.Command(runner, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Fatalf("runner %v: %v, want exit status 1", args, err)
		}
		return strings.TrimSpace(stderr.String())
	}
	var got []string
	got = append(got, run([]string{"NATSMESH_SHARDS=0"}))
	for _, name := range []string{"typo", "duration"} {
		if err := os.WriteFile(filepath.Join(dir, "runner.yaml"), []byte(files[name]), 0o600); err != nil {
			t.Fatal(err)
		}
		got = append(got, run(nil, "-config", "runner.yaml"))
	}
	if strings.Join(got, "\n") != strings.Join(shown, "\n") {
		t.Fatalf("the runner prints:\n%s\ndocs/configuration.md shows:\n%s", strings.Join(got, "\n"), strings.Join(shown, "\n"))
	}
}
