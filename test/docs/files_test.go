package docs_test

import (
	"os"
	"strings"
	"testing"
)

// The code the documentation shows is the code that is built and tested:
// each doc quotes these files verbatim (from the marker on).
func TestQuotedFiles(t *testing.T) {
	for _, c := range []struct{ doc, file, from string }{
		{"../../README.md", "../../examples/quickstart/main.go", "package main"},
		{"../../docs/own-service.md", "../ownservice/greeter/main.go", "// Greeting is"},
		{"../../docs/own-service.md", "../ownservice/greeter/Dockerfile", ""},
		{"../../docs/own-service.md", "../ownservice/greeter/deployment.yaml", ""},
	} {
		doc, err := os.ReadFile(c.doc)
		if err != nil {
			t.Fatal(err)
		}
		file, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		quoted := string(file)
		if i := strings.Index(quoted, c.from); i >= 0 {
			quoted = quoted[i:]
		}
		if !strings.Contains(string(doc), "\n"+quoted+"```") {
			t.Errorf("%s does not quote %s (from %q) as it is: update the doc", c.doc, c.file, c.from)
		}
	}
}
