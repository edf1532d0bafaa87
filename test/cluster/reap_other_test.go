//go:build unix && !linux

package cluster_test

import (
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// adoptOrphans cannot adopt outside Linux: collect can only tell whether a
// process still runs, not how it ended.
func adoptOrphans(t *testing.T) {
	t.Log("no subreaper outside Linux: exit statuses are not checked")
}

// collect reports an error if pid still runs (a zombie does not), after
// killing it.
func collect(pid int) (string, error) {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return "", nil
	}
	out, err := exec.Command("ps", "-o", "stat=", "-p", strconv.Itoa(pid)).Output()
	if err != nil || strings.HasPrefix(strings.TrimSpace(string(out)), "Z") {
		return "", nil // ps finds no such process, or a zombie
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return "", errors.New("still running (killed now)")
}

// leftovers finds nothing outside Linux: only the pid files name the
// processes.
func leftovers() []string { return nil }
