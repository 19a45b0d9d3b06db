package dmarc

import (
	"strings"
	"testing"
)

// FuzzFromDomains feeds message headers (client bytes) to the From:
// domain parsing: it must not panic, and what it returns must be distinct
// lower-case domains without a trailing dot, whose Authentication-Results
// form holds no control characters (no header injection).
func FuzzFromDomains(f *testing.F) {
	for _, seed := range []string{
		"From: a@example.org\r\n\r\nbody",
		"From: A <a@Example.ORG.>, b@example.net\r\nFrom : c@example.org\r\n\r\n",
		"From: \"x\\\"y\" <a@[192.0.2.1]>\r\n\r\n",
		"From: undisclosed-recipients:;\r\n\r\n",
		"From: a@example.org (comment (nested))\r\n\tfolded@example.com\r\n\r\n",
		"From: =?utf-8?q?caf=C3=A9?= <a@xn--caf-dma.example>\r\n\r\n",
		"Subject: no from\r\n\r\n",
		"From: <@route:a@b.example>\r\n\r\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		domains, _ := fromDomains(strings.NewReader(header))
		seen := map[string]bool{}
		for _, d := range domains {
			if seen[d] {
				t.Errorf("%q twice in %q", d, domains)
			}
			seen[d] = true
			if d != strings.ToLower(d) || strings.HasSuffix(d, ".") {
				t.Errorf("%q: not lower case without a trailing dot", d)
			}
			if v := pvalue(d); strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Errorf("pvalue(%q) = %q holds control characters", d, v)
			}
		}
	})
}
