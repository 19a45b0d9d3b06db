package dovecot

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// provisioned provisions d outside a Caddy config; Cleanup at the end.
func provisioned(t *testing.T, d *Dovecot) *Dovecot {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := d.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Cleanup() })
	return d
}

// TestRealDovecot asks a Dovecot started by the test, over its unix
// sockets and its TCP listener.
func TestRealDovecot(t *testing.T) {
	dv := startDovecot(t, "", dovecotUsers)
	ctx := context.Background()
	for _, auth := range []string{dv.authSock, "unix/" + dv.authSock, dv.authTCP, "tcp/" + dv.authTCP} {
		m := provisioned(t, &Dovecot{Auth: auth, Userdb: dv.userdbSock, Timeout: caddy.Duration(3 * time.Second)})
		if acct, err := m.Authenticate(ctx, "alice@example.test", "alice-dovecot-pw"); err != nil || acct != "alice@example.test" {
			t.Fatalf("%s: alice: %q, %v", auth, acct, err)
		}
		// Dovecot's default auth_username_format (%Lu) lower-cases.
		if acct, err := m.Authenticate(ctx, "Alice@Example.test", "alice-dovecot-pw"); err != nil || acct != "alice@example.test" {
			t.Fatalf("%s: Alice: %q, %v", auth, acct, err)
		}
		if _, err := m.Authenticate(ctx, "alice@example.test", "wrong"); err != smtpapp.ErrAuthFailed {
			t.Fatalf("%s: wrong password: %v", auth, err)
		}
		if _, err := m.Authenticate(ctx, "nobody@example.test", "x"); err != smtpapp.ErrAuthFailed {
			t.Fatalf("%s: unknown user: %v", auth, err)
		}
	}
	m := provisioned(t, &Dovecot{Auth: dv.authSock, Userdb: dv.userdbSock})
	if acct, err := m.Lookup(ctx, "bob@example.test"); err != nil || acct != "bob@example.test" {
		t.Fatalf("lookup bob: %q, %v", acct, err)
	}
	if _, err := m.Lookup(ctx, "zed@example.test"); err != smtpapp.ErrNoSuchUser {
		t.Fatalf("lookup of an unknown user: %v", err)
	}
	if _, err := m.Lookup(ctx, "tab\there@example.test"); err != smtpapp.ErrNoSuchUser {
		t.Fatalf("lookup of a name with a tab: %v", err)
	}

	// Many logins at once share the connection; each gets its own answer.
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pw, want := "alice-dovecot-pw", error(nil)
			if i%2 == 1 {
				pw, want = "wrong", smtpapp.ErrAuthFailed
			}
			if _, err := m.Authenticate(ctx, "alice@example.test", pw); err != want {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent login: %v", err)
	}

	// Dovecot stopped: temporary errors, never "wrong password" or "no
	// such user".
	dv.stop(t)
	start := time.Now()
	if _, err := m.Authenticate(ctx, "alice@example.test", "wrong"); err == nil || errors.Is(err, smtpapp.ErrAuthFailed) {
		t.Fatalf("Dovecot stopped: login: %v", err)
	}
	if _, err := m.Lookup(ctx, "zed@example.test"); err == nil || errors.Is(err, smtpapp.ErrNoSuchUser) {
		t.Fatalf("Dovecot stopped: lookup: %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("a stopped Dovecot took %v to notice", time.Since(start))
	}
}

// TestBareUserNames: a Dovecot whose users have no domain; domain and
// strip_domain make addresses of them.
func TestBareUserNames(t *testing.T) {
	dv := startDovecot(t, "", [][2]string{{"carol", "carol-pw"}})
	ctx := context.Background()
	m := provisioned(t, &Dovecot{Auth: dv.authSock, Userdb: dv.userdbSock, Domain: "Example.test", StripDomain: true})
	if acct, err := m.Authenticate(ctx, "carol", "carol-pw"); err != nil || acct != "carol@example.test" {
		t.Fatalf("login: %q, %v", acct, err)
	}
	if acct, err := m.Lookup(ctx, "carol@example.test"); err != nil || acct != "carol@example.test" {
		t.Fatalf("lookup: %q, %v", acct, err)
	}
	if _, err := m.Lookup(ctx, "dave@example.test"); err != smtpapp.ErrNoSuchUser {
		t.Fatalf("lookup of an unknown user: %v", err)
	}
	// Without strip_domain the userdb is asked for the address.
	m2 := provisioned(t, &Dovecot{Auth: dv.authSock, Userdb: dv.userdbSock, Domain: "example.test"})
	if _, err := m2.Lookup(ctx, "carol@example.test"); err != smtpapp.ErrNoSuchUser {
		t.Fatalf("lookup without strip_domain: %v", err)
	}
}
