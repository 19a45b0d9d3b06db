// Package adapttest runs a module's Caddyfile cases, in the style of
// Caddy's caddytest/integration/caddyfile_adapt: each case is a text file
// with the module's Caddyfile block, a separator line "----------", and
// the JSON the block unmarshals to. It is a test helper, not a module.
//
// Run the tests with -update to write the JSON the code produces into the
// files (then read the diff).
package adapttest

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Separator is the line between the Caddyfile and the JSON of a case.
const Separator = "----------"

var update = flag.Bool("update", false, "adapttest: write the JSON the code produces into the case files")

// Dir is where a module's package keeps its cases.
const Dir = "testdata/caddyfile"

// Run runs every case (*.txt) in Dir, each as a parallel subtest named
// after its file: the Caddyfile part goes through the UnmarshalCaddyfile
// of a module from newModule, whose JSON must equal the JSON part (same
// fields in the same order; white space does not matter). Each of the
// Caddyfile blocks in bad must be refused.
func Run(t *testing.T, newModule func() caddyfile.Unmarshaler, bad ...string) {
	t.Helper()
	t.Parallel()
	fail(t, newModule, bad)
	files, err := filepath.Glob(filepath.Join(Dir, "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no cases in %s (%v)", Dir, err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			t.Parallel()
			runCase(t, file, newModule())
		})
	}
}

func runCase(t *testing.T, file string, m caddyfile.Unmarshaler) {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	in, want, ok := split(string(b))
	if !ok {
		t.Fatalf("%s: no separator line %q", file, Separator)
	}
	if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	got, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		var pretty bytes.Buffer
		_ = json.Indent(&pretty, got, "", "\t")
		if err := os.WriteFile(file, []byte(in+"\n"+Separator+"\n"+pretty.String()+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(want)); err != nil {
		t.Fatalf("%s: the expected JSON: %v", file, err)
	}
	if string(got) != compact.String() {
		t.Errorf("%s:\ngot  %s\nwant %s", file, got, compact.String())
	}
}

// split cuts a case into its Caddyfile and its JSON.
func split(s string) (caddyfile, json string, ok bool) {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	before, after, ok := strings.Cut(s, "\n"+Separator+"\n")
	return strings.TrimSpace(before), strings.TrimSpace(after), ok
}

// fail checks that each of the Caddyfile blocks bad is refused by the
// UnmarshalCaddyfile of a module from newModule.
func fail(t *testing.T, newModule func() caddyfile.Unmarshaler, bad []string) {
	t.Helper()
	for _, in := range bad {
		if err := newModule().UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil {
			t.Errorf("%q: want an error", in)
		}
	}
}
