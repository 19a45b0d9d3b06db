package authtable

import (
	"strings"
	"testing"
)

func TestAddForwardsErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		fw   []Forward
		want string
	}{
		{[]Forward{{Address: "bob@example.test", To: []string{"x@example.org"}}}, "forwarding[0].address: bob@example.test already belongs to bob@example.test"},
		{[]Forward{{Address: "al@example.test", To: []string{"x@example.org"}}}, "forwarding[0].address: al@example.test already belongs to bob@example.test"},
		{[]Forward{{Address: "f@example.test"}}, "forwarding[0].to: f@example.test forwards to no address"},
		{[]Forward{{Address: "f@example.test", To: []string{"x@example.org", "bad address"}}}, `forwarding[0].to[1]: "bad address" is not a valid address`},
		{[]Forward{{Address: "f@example.test", To: []string{"F@example.test"}}}, "forwarding[0].to[0]: f@example.test forwards to itself"},
		{[]Forward{{Address: "f@example.test", To: []string{"a@example.org"}}, {Address: "F@example.test", To: []string{"b@example.org"}}}, "forwarding[1].address: f@example.test forwards twice"},
	} {
		tab, err := New([]Account{{Address: "bob@example.test", Aliases: []string{"al@example.test"}}}, "accounts")
		if err != nil {
			t.Fatal(err)
		}
		err = tab.AddForwards(tc.fw, "forwarding")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.fw, err, tc.want)
		}
	}
	tab, _ := New(nil, "accounts")
	if err := tab.AddForwards([]Forward{{Address: "Info@Example.test", To: []string{"Bob@Example.ORG"}}}, "forwarding"); err != nil {
		t.Fatal(err)
	}
	if got := tab.Forwards("INFO@example.test"); len(got) != 1 || got[0] != "Bob@example.org" {
		t.Fatalf("Forwards = %v", got)
	}
	if _, err := tab.Lookup("info@example.test"); err == nil {
		t.Fatal("a forwarding address is an account")
	}
}
