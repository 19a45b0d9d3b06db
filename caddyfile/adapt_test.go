package caddyfile_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-smtp/caddy-smtp"
)

var update = flag.Bool("update", false, "rewrite the golden JSON files")

// adapt turns a Caddyfile into indented JSON, as `caddy adapt` does.
func adapt(t *testing.T, path string) []byte {
	t.Helper()
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": path})
	if err != nil {
		t.Fatalf("adapting %s: %v", path, err)
	}
	for _, w := range warnings {
		t.Errorf("%s: warning: %s", path, w.String())
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	buf.WriteByte('\n')
	return buf.Bytes()
}

// TestExamplesAdaptToGolden: every examples/*.Caddyfile adapts to its
// golden examples/*.json, and that JSON provisions (validates) cleanly.
func TestExamplesAdaptToGolden(t *testing.T) {
	files, err := filepath.Glob("../examples/*Caddyfile")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example Caddyfiles: %v", err)
	}
	for _, cf := range files {
		name := strings.TrimSuffix(filepath.Base(cf), ".Caddyfile")
		if name == "Caddyfile" {
			name = "Caddyfile"
		}
		golden := filepath.Join("..", "examples", name+".json")
		t.Run(name, func(t *testing.T) {
			got := adapt(t, cf)
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("no golden file (run go test ./caddyfile -update): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s adapts to JSON that differs from %s (run go test ./caddyfile -update and review the diff):\n%s", cf, golden, got)
			}
			// The JSON must load: provision everything (without binding
			// ports), in a scratch folder for the relative data paths.
			t.Chdir(t.TempDir())
			if err := caddy.Validate(mustConfig(t, want)); err != nil {
				t.Fatalf("%s does not load: %v", golden, err)
			}
		})
	}
}

func mustConfig(t *testing.T, raw []byte) *caddy.Config {
	var cfg caddy.Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	return &cfg
}

// TestCaddyfileCases: each testdata/*.txt holds a Caddyfile, a line
// "----------", and the JSON its smtp global option adapts to (apps.smtp),
// in the style of Caddy's caddytest/integration/caddyfile_adapt.
func TestCaddyfileCases(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	if len(files) == 0 {
		t.Fatal("no cases in testdata")
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			caddyfileText, wantJSON, ok := strings.Cut(string(raw), "\n----------\n")
			if !ok {
				t.Fatalf("%s: no separator line", path)
			}
			out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileText), map[string]any{"filename": path})
			if err != nil {
				t.Fatalf("adapting: %v", err)
			}
			var cfg struct {
				Apps map[string]json.RawMessage `json:"apps"`
			}
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatal(err)
			}
			var got, want bytes.Buffer
			json.Indent(&got, cfg.Apps["smtp"], "", "\t")
			if err := json.Compact(&want, []byte(wantJSON)); err != nil {
				t.Fatalf("%s: expected JSON: %v", path, err)
			}
			var gotCompact bytes.Buffer
			json.Compact(&gotCompact, got.Bytes())
			if gotCompact.String() != want.String() {
				t.Fatalf("%s adapts to:\n%s", path, got.String())
			}
		})
	}
}
