package authtable

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// TestUnknownUserCostsTheSame: a login for an unknown account is checked
// against a hash of the highest cost in use, so it takes as long as a
// wrong password for the slowest account.
func TestUnknownUserCostsTheSame(t *testing.T) {
	h10, _ := bcrypt.GenerateFromPassword([]byte("a"), 10)
	h12, _ := bcrypt.GenerateFromPassword([]byte("b"), 12)
	tab, err := New([]Account{{Address: "a@example.test", Password: string(h10)}, {Address: "b@example.test", Password: string(h12)}}, "accounts")
	if err != nil {
		t.Fatal(err)
	}
	if cost, _ := bcrypt.Cost(tab.dummy); cost != 12 {
		t.Fatalf("dummy hash cost %d, want 12", cost)
	}
	if _, err := tab.Authenticate("nobody@example.test", "x"); err == nil {
		t.Fatal("unknown user authenticated")
	}
	if acct, err := tab.Authenticate("B@example.test", "b"); err != nil || acct != "b@example.test" {
		t.Fatalf("b: %q %v", acct, err)
	}
}

// TestVerifiedCache: a good login is remembered (no bcrypt next time)
// for that password only; wrong passwords are never remembered, and an
// entry past its time is not used.
func TestVerifiedCache(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("right"), bcrypt.MinCost)
	tab, err := New([]Account{{Address: "a@example.test", Password: string(h)}}, "accounts")
	if err != nil {
		t.Fatal(err)
	}
	if tab.verified.check("a@example.test", tab.verified.digest("a@example.test", "right")) {
		t.Fatal("remembered before any login")
	}
	if _, err := tab.Authenticate("a@example.test", "wrong"); err == nil {
		t.Fatal("wrong password accepted")
	}
	if len(tab.verified.entries) != 0 {
		t.Fatal("a failed login was remembered")
	}
	if acct, err := tab.Authenticate("A@example.test", "right"); err != nil || acct != "a@example.test" {
		t.Fatalf("right password: %q %v", acct, err)
	}
	if !tab.verified.check("a@example.test", tab.verified.digest("a@example.test", "right")) || tab.verified.check("a@example.test", tab.verified.digest("a@example.test", "wrong")) {
		t.Fatal("the cache must hold the right password and only it")
	}
	if _, err := tab.Authenticate("a@example.test", "wrong"); err == nil {
		t.Fatal("wrong password accepted after a good login")
	}
	e := tab.verified.entries["a@example.test"]
	e.expires = time.Now().Add(-time.Second)
	tab.verified.entries["a@example.test"] = e
	if tab.verified.check("a@example.test", tab.verified.digest("a@example.test", "right")) {
		t.Fatal("an expired entry was used")
	}
	other, _ := New([]Account{{Address: "a@example.test", Password: string(h)}}, "accounts")
	if other.verified.digest("a@example.test", "right") == tab.verified.digest("a@example.test", "right") {
		t.Fatal("two tables share a key")
	}
}

// TestConcurrentLogins: the same logins on many connections at once, the
// right password and a wrong one, each get the right answer (they share
// bcrypt checks; this checks the answers, not the sharing).
func TestConcurrentLogins(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("right"), bcrypt.MinCost)
	tab, err := New([]Account{{Address: "a@example.test", Password: string(h)}}, "accounts")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 40)
	for i := 0; i < 20; i++ {
		for _, pw := range []string{"right", "wrong"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := tab.Authenticate("a@example.test", pw)
				if (err == nil) != (pw == "right") {
					errs <- pw + ": " + fmt.Sprint(err)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
