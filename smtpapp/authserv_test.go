package smtpapp

import "testing"

// TestAuthservID: the authserv-id is found through comments (nested,
// escaped, with semicolons), quotes, folding and a trailing dot.
func TestAuthservID(t *testing.T) {
	for _, v := range []string{
		" mail.example.test; dmarc=pass",
		" ((nested)) mail.example.test; dmarc=pass",
		" (a\\) b) mail.example.test; dmarc=pass",
		" (a;b) mail.example.test; dmarc=pass",
		" \"mail.example.test\"; dmarc=pass",
		" mail.example.test.; dmarc=pass",
		"\r\n\tMAIL.example.test 1; spf=pass",
	} {
		if got := authservID(v); got != "mail.example.test" {
			t.Errorf("authservID(%q) = %q", v, got)
		}
	}
	if got := authservID(" relay.example.org; dkim=pass header.d=mail.example.test"); got != "relay.example.org" {
		t.Errorf("another server's results: %q", got)
	}
}
