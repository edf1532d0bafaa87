package actor_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps the layering of docs/design.md: actor uses the standard
// library only.
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/natsmesh/natsmesh/actor").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.Contains(dep, ".") && !strings.HasPrefix(dep, "github.com/natsmesh/natsmesh/actor") {
			t.Errorf("actor imports %s: it must use the standard library only", dep)
		}
	}
}
