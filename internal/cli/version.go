package cli

import (
	"runtime/debug"
	"strings"
)

// SetVersion sets the version -version prints (Version(v)).
func (s *Settings) SetVersion(v string) { s.version = Version(v) }

// Version returns v or, when v is empty, the main module's version from
// the build information ("(devel)" for a build from a work tree), followed
// by the VCS revision when the build recorded one. The binaries print it
// for -version, register it with their runner and label natsmesh_build_info
// with it.
func Version(v string) string {
	bi, ok := debug.ReadBuildInfo()
	if v == "" {
		v = "(devel)"
		if ok && bi.Main.Version != "" {
			v = bi.Main.Version
		}
	}
	if !ok {
		return v
	}
	var rev, dirty string
	for _, st := range bi.Settings {
		switch st.Key {
		case "vcs.revision":
			rev = st.Value
		case "vcs.modified":
			if st.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if rev != "" && !strings.Contains(v, rev[:min(12, len(rev))]) {
		v += " (" + rev[:min(12, len(rev))] + dirty + ")"
	}
	return v
}
