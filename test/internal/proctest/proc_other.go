//go:build unix && !linux

package proctest

import "syscall"

// sysProcAttr has no parent-death signal outside Linux: the children are
// killed by the tests' cleanups only.
func sysProcAttr() *syscall.SysProcAttr { return nil }
