package authtable

import (
	"testing"

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
