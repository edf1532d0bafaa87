// Package cmdtest builds the project's commands for tests that run them as
// processes (test/failover, test/cluster).
//
// # Usage
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		cmdtest.Remove()
//		os.Exit(code)
//	}
//
//	dir := cmdtest.Build(t, "./cmd/runner", "./cmd/shardmgr")
//	runner := filepath.Join(dir, "runner")
//
// Packages are named as `go build` takes them, relative to the module root
// (./cmd/runner) or by import path (github.com/nats-io/nats-server/v2, at
// the version go.mod pins); each binary is named as `go build -o dir/`
// names it (runner, nats-server).
//
// # Concurrency
//
// Build may be called from parallel tests: each list of packages is built
// once per test binary, and every caller waits for that one build.
//
// # Guarantees
//
// The binaries are built without -race, whatever the test binary was built
// with: they are the programs users run, and a race-instrumented nats-server
// would make timing-sensitive tests slow. They stay until Remove.
package cmdtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

type build struct {
	once sync.Once
	dir  string
	err  error
}

var (
	mu     sync.Mutex
	builds = map[string]*build{} // by the package list
)

// Build builds pkgs into one folder, once per test binary for the same
// list, and returns the folder. It fails the test if the build fails.
func Build(t testing.TB, pkgs ...string) string {
	t.Helper()
	key := strings.Join(pkgs, " ")
	mu.Lock()
	b := builds[key]
	if b == nil {
		b = &build{}
		builds[key] = b
	}
	mu.Unlock()
	b.once.Do(func() { b.dir, b.err = goBuild(pkgs) })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.dir
}

// Remove deletes every folder Build made. Call it from TestMain after the
// tests have run.
func Remove() {
	mu.Lock()
	defer mu.Unlock()
	for _, b := range builds {
		if b.dir != "" {
			_ = os.RemoveAll(b.dir)
		}
	}
	clear(builds)
}

// ModuleRoot is the folder of the go.mod the tests run in.
func ModuleRoot() (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", err
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD = %q: not in a module", gomod)
	}
	return filepath.Dir(gomod), nil
}

func goBuild(pkgs []string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", fmt.Errorf("build %s: %w", strings.Join(pkgs, " "), err)
	}
	dir, err := os.MkdirTemp("", "natsmesh-bin-")
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return dir, nil
}
