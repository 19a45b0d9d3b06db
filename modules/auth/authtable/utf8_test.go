package authtable

import "testing"

// TestUTF8Accounts: accounts and aliases may have UTF-8 local parts and
// IDN domains; lookups match whichever IDN form and case is used, an
// address given twice in two forms is a duplicate, and names with bidi
// or control characters are refused.
func TestUTF8Accounts(t *testing.T) {
	tab, err := New([]Account{
		{Address: "jürgen@bücher.example", Aliases: []string{"Info@xn--bcher-kva.example", "用户@例子.example"}},
		{Address: "ascii@example.test", SendAs: []string{"verkauf@bücher.example"}},
	}, "accounts")
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]string{
		"jürgen@bücher.example":        "jürgen@xn--bcher-kva.example",
		"JÜRGEN@xn--bcher-kva.example": "jürgen@xn--bcher-kva.example",
		"ju\u0308rgen@BÜCHER.example":  "jürgen@xn--bcher-kva.example", // NFD, upper-case U-label
		"info@bücher.example":          "jürgen@xn--bcher-kva.example",
		"用户@xn--fsqu00a.example":       "jürgen@xn--bcher-kva.example",
	} {
		if got, err := tab.Lookup(addr); err != nil || got != want {
			t.Errorf("Lookup(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
	if !tab.MaySendAs("ascii@example.test", "verkauf@xn--bcher-kva.example") {
		t.Error("send_as in U-label form does not match the A-label form")
	}
	if _, err := New([]Account{{Address: "a@bücher.example"}, {Address: "A@xn--bcher-kva.example"}}, "accounts"); err == nil {
		t.Error("one address in two IDN forms accepted twice")
	}
	for _, bad := range []string{"evil\u202e@example.test", "a\u200b@example.test", "a@b\u0000c.example", "a\xff@example.test"} {
		if _, err := New([]Account{{Address: bad}}, "accounts"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
