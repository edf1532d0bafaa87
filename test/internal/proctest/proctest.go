//go:build unix

// Package proctest runs the project's binaries (built with
// internal/testkit/cmdtest) as child processes, for tests that kill, pause and
// restart them (test/failover, test/chaos).
//
// # Usage
//
//	dir := cmdtest.Build(t, "./cmd/runner")
//	p := proctest.Start(t, "r1", filepath.Join(dir, "runner"), "-id", "r1")
//	p.Signal(syscall.SIGKILL)
//	<-p.Done()
//
// # Concurrency
//
// A Proc's methods are safe for concurrent use.
//
// # Guarantees
//
// Every child started by Start is killed (if still running) and reaped on
// the test's cleanup, and on Linux the kernel kills it if the test binary
// dies first (parent-death signal), so no child outlives its test.
package proctest

import (
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// Proc is a child process.
type Proc struct {
	name string
	cmd  *exec.Cmd
	buf  *natstest.Buffer // output, when kept in memory
	done chan struct{}    // closed once exited; then err and exitAt are set
	err  error
	at   time.Time
}

// Start starts bin with args, keeping its output in memory; on cleanup it
// is killed (if still running) and reaped, and its output is logged if the
// test failed.
func Start(t testing.TB, name, bin string, args ...string) *Proc {
	t.Helper()
	buf := &natstest.Buffer{}
	p := start(t, name, buf, bin, args)
	p.buf = buf
	t.Cleanup(func() {
		p.reap()
		if t.Failed() {
			t.Logf("---- %s %s (%s) output:\n%s", name, strings.Join(args, " "), p.Status(), buf.String())
		}
	})
	return p
}

// StartLogged is Start with the output appended to the file logPath
// instead (for long runs and many processes); on a failure only the file's
// name is logged.
func StartLogged(t testing.TB, name, logPath, bin string, args ...string) *Proc {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := start(t, name, f, bin, args)
	t.Cleanup(func() {
		p.reap()
		_ = f.Close()
		if t.Failed() {
			t.Logf("---- %s (%s): output in %s", name, p.Status(), logPath)
		}
	})
	return p
}

func start(t testing.TB, name string, out io.Writer, bin string, args []string) *Proc {
	t.Helper()
	p := &Proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	p.cmd.SysProcAttr = sysProcAttr()
	p.cmd.WaitDelay = 5 * time.Second // bound the wait for an output pipe
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		err := p.cmd.Wait()
		p.err, p.at = err, time.Now()
		close(p.done)
	}()
	return p
}

// reap kills the process if it still runs (a stopped one too: SIGKILL
// needs no SIGCONT) and waits for it.
func (p *Proc) reap() {
	if !p.Exited() {
		_ = p.cmd.Process.Kill()
	}
	<-p.done
}

// Name returns the name given to Start.
func (p *Proc) Name() string { return p.name }

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err returns how the process exited (nil: status 0); valid after Done.
func (p *Proc) Err() error { <-p.done; return p.err }

// ExitAt returns when the process was seen to exit; valid after Done.
func (p *Proc) ExitAt() time.Time { <-p.done; return p.at }

// Killed reports whether the process exited from signal sig.
func (p *Proc) Killed(sig syscall.Signal) bool {
	if !p.Exited() || p.cmd.ProcessState == nil {
		return false
	}
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// Status describes the process's state: "running", "exited 0" or its exit
// error.
func (p *Proc) Status() string {
	if !p.Exited() {
		return "running"
	}
	if p.err == nil {
		return "exited 0"
	}
	return p.err.Error()
}

// Output returns what the process wrote so far (Start only; "" for
// StartLogged).
func (p *Proc) Output() string {
	if p.buf == nil {
		return ""
	}
	return p.buf.String()
}
