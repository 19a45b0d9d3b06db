package smtpapp

import (
	"strconv"
	"strings"
	"testing"
)

// TestGoSMTPReplyTable: every reply go-smtp makes up that the RFCs give
// another code is rewritten to a well-formed reply of the right class:
// 503 for a bad sequence, 555 for an unknown parameter, 500/501 for
// syntax, never 502 for something go-smtp does implement.
func TestGoSMTPReplyTable(t *testing.T) {
	for from, to := range goSMTPReplies {
		if !strings.HasSuffix(from, "\r\n") || !strings.HasSuffix(to, "\r\n") {
			t.Errorf("%q -> %q: lines end in CRLF", from, to)
		}
		code, err := strconv.Atoi(to[:3])
		if err != nil || to[3] != ' ' {
			t.Errorf("%q: malformed", to)
			continue
		}
		if enh := strings.Fields(to)[1]; enh[0] != to[0] {
			t.Errorf("%q: enhanced code class differs from the reply's", to)
		}
		switch {
		case strings.Contains(from, "not implemented") || strings.Contains(from, "Unknown MAIL") || strings.Contains(from, "Unknown RCPT"):
			if code != 555 {
				t.Errorf("%q: unknown parameter must be 555, is %d", from, code)
			}
		case strings.HasPrefix(from, "502 5.5.1") && (strings.Contains(from, "Missing") || strings.Contains(from, "not allowed") || strings.Contains(from, "introduce") || strings.Contains(from, "Already")):
			if code != 503 {
				t.Errorf("%q: bad sequence must be 503, is %d", from, code)
			}
		}
		if code == 502 {
			t.Errorf("%q: 502 is for commands we do not implement", to)
		}
	}
}

func FuzzCommandLine(f *testing.F) {
	for _, seed := range []string{"MAIL FROM:<a@b>", "ehlo x", "", " ", "BDAT 5 LAST", "GET / HTTP/1.1", "Host: x", "NOOP\x00"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		verb, arg := splitCommand(line)
		// The same as the plain reading, without its copies.
		if v, a, _ := cutSpace(string(line)); verb != upperASCII(v) || arg != a {
			t.Fatalf("%q: verb %q arg %q, want %q %q", line, verb, arg, upperASCII(v), a)
		}
		if verb != upperASCII(verb) || strings.Contains(verb, " ") {
			t.Fatalf("verb %q", verb)
		}
		if strings.HasPrefix(arg, " ") || strings.HasSuffix(arg, " ") {
			t.Fatalf("arg %q not trimmed", arg)
		}
		if len(verb)+len(arg) > len(line) {
			t.Fatalf("%q grew", line)
		}
		if !hasControl(line) && strings.ContainsAny(verb+arg, "\x00\r\n") {
			t.Fatalf("control character missed in %q", line)
		}
		isHTTPVerb(verb)
	})
}

// TestValidHostnameNumericLabels: all-digit labels are names (DKIM date
// selectors like 20240101, "mx.1"); only an IP address is refused.
func TestValidHostnameNumericLabels(t *testing.T) {
	for s, want := range map[string]bool{
		"20240101": true, "s1.2024": true, "mx.1": true, "010.1.1.1": true,
		"192.0.2.1": false, "::1": false, "mail.example.test": true,
	} {
		if got := ValidHostname(s); got != want {
			t.Errorf("ValidHostname(%q) = %v, want %v", s, got, want)
		}
	}
}
