package file_test

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/modules/auth/authtable"
	"github.com/caddy-smtp/caddy-smtp/modules/auth/file"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"
	"golang.org/x/crypto/bcrypt"
)

func hash(t *testing.T, p string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func auth(user, pass string) string {
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass))
}

// TestUsersFileChangesWithoutReload: editing the file changes who can log
// in and which mailboxes exist, with no config reload; bad lines are
// skipped and do not lock anyone out.
func TestUsersFileChangesWithoutReload(t *testing.T) {
	env := testenv.New(t)
	users := env.Path("users")
	os.WriteFile(users, []byte("# accounts\n"+
		"alice@example.test:"+hash(t, "one")+":postmaster@example.test\n"+
		"this line is broken\n"+
		"bob@example.test:not-a-hash\n"), 0o600)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	app := map[string]any{
		"local_domains":  []string{"example.test"},
		"accounts":       map[string]any{"provider": "file", "path": users, "check_interval": "10ms"},
		"local_delivery": map[string]any{"target": "maildir", "root": env.Path("maildir")},
		"spool_dir":      env.Path("spool"),
		"servers": map[string]any{"sub": map[string]any{
			"listen": []string{addr}, "hostname": "mail.example.test", "require_auth": true,
			"tls": map[string]any{"issuer": "internal"},
		}},
	}
	env.Load(env.Config(app, nil))
	testenv.WaitFor(10*time.Second, func() bool {
		_, err := os.Stat(env.Path("caddy", "pki", "authorities", "local", "root.crt"))
		return err == nil
	})
	cfg := &tls.Config{RootCAs: env.RootCAs(), ServerName: "mail.example.test"}
	testenv.WaitForCertificate(t, addr, cfg)
	try := func(user, pass string) int {
		c, _ := testenv.Dial(t, addr)
		c.Expect("EHLO client.example.org", 250)
		c.StartTLS(cfg)
		c.Expect("EHLO client.example.org", 250)
		return c.Cmd(auth(user, pass)).Code
	}
	if code := try("alice@example.test", "one"); code != 235 {
		t.Fatalf("alice with the first password: %d", code)
	}
	if code := try("bob@example.test", "x"); code != 535 {
		t.Fatalf("bob with a broken hash line: %d", code)
	}
	// Change alice's password and add carol with the subcommand's writer.
	if err := file.SetUser(users, authtable.Account{Address: "alice@example.test", Password: hash(t, "two")}, false); err != nil {
		t.Fatal(err)
	}
	if err := file.SetUser(users, authtable.Account{Address: "carol@example.test", Password: hash(t, "three")}, true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if code := try("alice@example.test", "one"); code != 535 {
		t.Fatalf("alice's old password still works: %d", code)
	}
	if code := try("alice@example.test", "two"); code != 235 {
		t.Fatalf("alice's new password: %d", code)
	}
	if code := try("carol@example.test", "three"); code != 235 {
		t.Fatalf("carol, added: %d", code)
	}
	// The alias survived the password change; comments and bad lines are kept.
	accounts, err := file.ParseFile(users, func(int, string) {})
	if err != nil {
		t.Fatal(err)
	}
	if len(accounts) != 2 || len(accounts[0].Aliases) != 1 {
		t.Fatalf("after edits: %+v", accounts)
	}
	data, _ := os.ReadFile(users)
	if string(data[:11]) != "# accounts\n" {
		t.Fatalf("comment lost: %q", data)
	}
}

func TestParseFileReportsLineNumbers(t *testing.T) {
	t.Parallel()
	p := t.TempDir() + "/users"
	h := hash(t, "x")
	os.WriteFile(p, []byte("a@example.test:"+h+"\n\n# c\nbroken\nb@example.test:"+h+":a@example.test\nc@@x:"+h+"\n"), 0o600)
	var bad []int
	accts, err := file.ParseFile(p, func(line int, msg string) { bad = append(bad, line) })
	if err != nil {
		t.Fatal(err)
	}
	if len(accts) != 1 || fmt.Sprint(bad) != "[4 5 6]" {
		t.Fatalf("accounts %v, bad lines %v (want [4 5 6])", accts, bad)
	}
}
