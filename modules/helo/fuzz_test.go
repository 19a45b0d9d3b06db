package helo

import (
	"strings"
	"testing"
)

// FuzzHeloName feeds HELO names (client bytes) to the address-literal
// parser and to clean, which puts the name into replies and logs: no
// panic, a literal is only ever the right family, and clean keeps to at
// most 100 printable ASCII characters without parentheses or
// backslashes.
func FuzzHeloName(f *testing.F) {
	for _, seed := range []string{
		"mail.example.org", "[192.0.2.1]", "[IPv6:2001:db8::1]", "[ipv6:::ffff:192.0.2.1]", "[IPv6:fe80::1%eth0]",
		"[300.1.1.1]", "[]", "[IPv6:]", "192.0.2.1", "localhost", "a..b", "(x)\\y", "caf\u00e9.example", "\xff\xfe",
		strings.Repeat("a.", 200),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, name string) {
		ip, isLiteral, ok := parseLiteral(name)
		if ok && (!isLiteral || !ip.IsValid() || ip.Zone() != "" || !v6(name) && !ip.Is4()) {
			t.Errorf("%q: literal %v (literal %v) accepted", name, ip, isLiteral)
		}
		c := clean(name)
		if len(c) > 100 {
			t.Errorf("clean(%q): %d bytes", name, len(c))
		}
		if strings.ContainsFunc(c, func(r rune) bool { return r <= 0x20 || r >= 0x7f || r == '(' || r == ')' || r == '\\' }) {
			t.Errorf("clean(%q) = %q", name, c)
		}
	})
}

func v6(literal string) bool { return len(literal) > 6 && strings.EqualFold(literal[1:6], "IPv6:") }
