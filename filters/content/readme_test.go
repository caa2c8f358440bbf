package content_test

import (
	"os"
	"regexp"
	"testing"

	"moat/policies"
)

// TestREADMEPolicy loads every ```yaml block of README.md as a policy
// file: the examples must stay valid, with no warning.
func TestREADMEPolicy(t *testing.T) {
	data, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(data, -1)
	if len(blocks) == 0 {
		t.Fatal("no yaml block in README.md")
	}
	for i, b := range blocks {
		specs, errs := policies.Parse("README.md", b[1])
		if len(errs) > 0 {
			t.Errorf("block %d: %v", i+1, errs)
			continue
		}
		set, errs := policies.Compile(specs...)
		if len(errs) > 0 || set == nil {
			t.Errorf("block %d: %v", i+1, errs)
			continue
		}
		var names []string
		for _, c := range set.Default().Checks() {
			names = append(names, c.Name())
		}
		if got := len(names); got != 3 {
			t.Errorf("block %d runs %v, want headers, attachments and gtube", i+1, names)
		}
	}
}
