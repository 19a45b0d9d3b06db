package maildir

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestPathNames: UTF-8 local parts keep their name, an IDN domain lands in
// its A-label folder whichever form it comes in, and no name leaves the
// root or hides a control or bidi character.
func TestPathNames(t *testing.T) {
	root := t.TempDir()
	m := &Maildir{root: root, JunkFolder: "Junk"}
	for mailbox, want := range map[string]string{
		"alice@example.test":            "example.test/alice",
		"Alice@EXAMPLE.test":            "example.test/alice",
		"jürgen@bücher.example":         "xn--bcher-kva.example/jürgen",
		"jürgen@xn--bcher-kva.example":  "xn--bcher-kva.example/jürgen",
		"用户@例子.example":                 "xn--fsqu00a.example/用户",
		"a..b@example.test":             "example.test/a..b",
		"ПОЧТА@xn--bcher-kva.example":   "xn--bcher-kva.example/почта",
		"o'brien+x@example.test":        "example.test/o'brien+x",
		"dots.in.name@sub.example.test": "sub.example.test/dots.in.name",
	} {
		p, err := m.Path(mailbox, false)
		if err != nil {
			t.Errorf("%q: %v", mailbox, err)
			continue
		}
		if p != filepath.Join(root, want) {
			t.Errorf("%q: %s, want %s", mailbox, p, want)
		}
	}
	for _, mailbox := range []string{
		"../x@example.test", "..@example.test", ".hidden@example.test", "a/b@example.test", `a\b@example.test`,
		"a@../example.test", "a@ex/ample.test", "x@.", "@example.test", "nodomain",
		"a\x00b@example.test", "a\nb@example.test", "a\x7fb@example.test", "a\u0085b@example.test",
		"evil\u202egpj@example.test", "zero\u200bwidth@example.test", "bom\ufeff@example.test",
		"sp\u00a0ace@example.test", "line\u2028sep@example.test", "priv\ue000@example.test",
		"bad\xffutf8@example.test", "a@bad\xff.example", strings.Repeat("a", 256) + "@example.test",
	} {
		if p, err := m.Path(mailbox, false); err == nil {
			t.Errorf("%q: accepted as %s", mailbox, p)
		}
	}
	if p, _ := m.Path("jürgen@bücher.example", true); p != filepath.Join(root, "xn--bcher-kva.example/jürgen/.Junk") {
		t.Errorf("junk folder: %s", p)
	}
}
