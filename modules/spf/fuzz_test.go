package spf

import (
	"strings"
	"testing"

	"blitiri.com.ar/go/spf"
)

// FuzzReceivedSPF feeds the client's MAIL FROM address and HELO name into
// the Received-SPF field: whatever they hold, the field keeps its two
// folds and no other line break or control character (no header
// injection), and kvValue leaves a value as is only when it is a
// dot-atom.
func FuzzReceivedSPF(f *testing.F) {
	for _, seed := range [][2]string{
		{"sender@pass.test", "client.pass.test"},
		{"", "helo.test"},
		{"\"odd local\"@example.org", "[192.0.2.1]"},
		{"a@b\r\nX-Injected: 1", "h\r\n\tfold"},
		{"a\\\"b@example.org", "(comment)"},
		{"caf\u00e9@example.org", "\xff"},
		{".dot@example.org", "a..b"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, from, helo string) {
		ck := check{result: spf.Fail, from: from, helo: helo, ip: "192.0.2.1", identity: "mailfrom", domain: "example.org"}
		v := receivedSPF(ck, "mx.example.org")
		if n := strings.Count(v, "\r\n\t"); n != 2 || strings.Count(v, "\r") != 2 || strings.Count(v, "\n") != 2 {
			t.Errorf("line breaks in %q", v)
		}
		if strings.ContainsFunc(strings.ReplaceAll(v, "\r\n\t", " "), func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Errorf("control characters in %q", v)
		}
		for _, s := range []string{from, helo} {
			if kv := kvValue(s); kv == s && (s == "" || strings.ContainsAny(s, " \t\"\\();:<>@,[]")) {
				t.Errorf("kvValue(%q) left as is", s)
			}
		}
	})
}
