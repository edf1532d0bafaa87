//go:build !unix

package app

// lockDir does not lock on this platform: two -dev processes on one data
// folder are not prevented (nats-server's own lock on its store still
// refuses the second server).
func lockDir(string) (unlock func(), err error) { return func() {}, nil }
