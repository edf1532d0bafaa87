package cluster_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER (linux/prctl.h), which the
// syscall package does not name.
const prSetChildSubreaper = 36

// adoptOrphans makes the test process the subreaper of its descendants:
// the processes cluster.sh detaches become its children when the script
// exits, so it can wait for them.
func adoptOrphans(t *testing.T) {
	t.Helper()
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", errno)
	}
}

// collect reaps pid, which must have exited, and returns "" if it exited
// with status 0, else how it ended. A process still running is killed
// (SIGKILL) and reported as an error.
func collect(pid int) (string, error) {
	var ws syscall.WaitStatus
	got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	switch {
	case err != nil:
		return "", fmt.Errorf("wait4: %w", err)
	case got == 0:
		_ = syscall.Kill(pid, syscall.SIGKILL)
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
		return "", errors.New("still running (killed now)")
	case ws.Signaled():
		return "killed by " + ws.Signal().String(), nil
	case ws.ExitStatus() != 0:
		return "exited with status " + strconv.Itoa(ws.ExitStatus()), nil
	}
	return "", nil
}

// leftovers reaps the test's remaining children (every descendant that
// outlived its parent is one), killing the live ones, and describes them.
func leftovers() []string {
	var left []string
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	self := os.Getpid()
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(s[i+1:])
		if len(fields) < 2 || fields[1] != strconv.Itoa(self) {
			continue
		}
		pid, _ := strconv.Atoi(strings.Fields(s)[0])
		desc := fmt.Sprintf("pid %d %s state %s", pid, s[strings.IndexByte(s, '('):i+1], fields[0])
		if status, err := collect(pid); err != nil {
			desc += ": " + err.Error()
		} else if status != "" {
			desc += ": " + status
		}
		left = append(left, desc)
	}
	return left
}
