package file

import (
	"os"
	"path/filepath"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/pflag"
	"golang.org/x/crypto/bcrypt"
)

// TestSmtpUserCommand runs `caddy smtp-user` twice: it adds a user with an
// alias, then changes the password and keeps the alias and other lines.
func TestSmtpUserCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	os.WriteFile(path, []byte("# mail users\nbob@example.test:$2a$04$abcdefghijklmnopqrstuu5Zb9yLw2QYbT4QvK0m9ZsRrZ8Kk2Wm2\n"), 0o600)
	run := func(args ...string) {
		t.Helper()
		fs := pflag.NewFlagSet("smtp-user", pflag.ContinueOnError)
		fs.StringP("file", "f", "", "")
		fs.StringP("user", "u", "", "")
		fs.StringSliceP("alias", "a", nil, "")
		fs.StringP("plaintext", "p", "", "")
		fs.IntP("cost", "c", bcrypt.MinCost, "")
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if code, err := cmdUser(caddycmd.Flags{FlagSet: fs}); code != 0 || err != nil {
			t.Fatalf("smtp-user %v: exit %d, %v", args, code, err)
		}
	}
	run("--file", path, "--user", "alice@example.test", "--alias", "postmaster@example.test", "--plaintext", "one")
	run("--file", path, "--user", "Alice@example.test", "--plaintext", "two")
	accounts, err := ParseFile(path, func(line int, msg string) { t.Errorf("line %d: %s", line, msg) })
	if err != nil {
		t.Fatal(err)
	}
	if len(accounts) != 2 || accounts[1].Address != "Alice@example.test" || len(accounts[1].Aliases) != 1 {
		t.Fatalf("accounts: %+v", accounts)
	}
	if bcrypt.CompareHashAndPassword([]byte(accounts[1].Password), []byte("two")) != nil {
		t.Fatal("password not changed")
	}
	data, _ := os.ReadFile(path)
	if string(data[:13]) != "# mail users\n" {
		t.Fatalf("comment lost: %q", data)
	}
}
