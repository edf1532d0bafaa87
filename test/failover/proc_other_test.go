//go:build unix && !linux

package failover_test

import "syscall"

// sysProcAttr has no parent-death signal outside Linux: the children are
// killed by the tests' cleanups only.
func sysProcAttr() *syscall.SysProcAttr { return nil }
