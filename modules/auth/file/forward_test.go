package file_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-smtp/caddy-smtp/modules/auth/file"
)

// TestForwardLines: `address:>target,target` lines forward; a forwarding
// line that clashes with an account, or has no target, is skipped with
// its line number.
func TestForwardLines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "users")
	os.WriteFile(p, []byte("bob@example.test:\n"+
		"info@example.test:> bob@example.test, someone@example.org\n"+
		"bob@example.test:>elsewhere@example.org\n"+
		"empty@example.test:>\n"+
		"self@example.test:>self@example.test\n"), 0o600)
	var bad []int
	accts, fwds, err := file.ParseUsersFile(p, func(line int, msg string) { bad = append(bad, line) })
	if err != nil {
		t.Fatal(err)
	}
	if len(accts) != 1 || len(fwds) != 1 || !slices.Equal(bad, []int{3, 4, 5}) {
		t.Fatalf("accounts %v, forwards %v, bad lines %v", accts, fwds, bad)
	}
	if _, err := file.ParseLine("info@example.test:>bob@example.test"); err == nil {
		t.Fatal("ParseLine took a forwarding line for an account")
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	f := &file.File{Path: p}
	if err := f.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	got, _ := f.Forwards(ctx, "INFO@example.test")
	if !slices.Equal(got, []string{"bob@example.test", "someone@example.org"}) {
		t.Fatalf("Forwards(info) = %v", got)
	}
	if got, _ := f.Forwards(ctx, "bob@example.test"); got != nil {
		t.Fatalf("Forwards(bob) = %v", got)
	}
}
