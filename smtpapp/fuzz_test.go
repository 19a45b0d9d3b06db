package smtpapp

// Native fuzz tests of the parsers that see client bytes. Each target
// checks invariants, not just the absence of a panic. The corpus the
// fuzzer found lives under testdata/fuzz/<FuzzName>/, so `go test` runs it
// as seeds; run one target with e.g.
//
//	go test ./smtpapp -run '^$' -fuzz '^FuzzParseAddress$' -fuzztime 45s

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
	"golang.org/x/text/unicode/norm"
)

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"alice@example.test", "Alice.Liddell+tag@EXAMPLE.test.", "postmaster@example.test",
		"a@b", "@example.test", "a@@b", "a@b@c", "a@[127.0.0.1]", "a@127.0.0.1", "a@1.2.3.4.",
		"a%b@c.example", "bang!path@x.example", "a b@c", "\"a@b\"@c", "a\\@b@c", "a@-x.example",
		"a@x-.example", "a@x..example", "a@.example", "a@example..", "a@x_y.example", "ü@example.test",
		"a@exämple.test", "a\x00@b", "a@b\x7f", strings.Repeat("l", 64) + "@x", strings.Repeat("l", 65) + "@x",
		"a@" + strings.Repeat("x.", 126) + "x", "a@" + strings.Repeat("y", 64) + ".example", "a@::1", "a@fe80::1%eth0",
	} {
		f.Add(s)
	}
	// The UTF-8 mode (MAIL ... SMTPUTF8).
	for _, s := range []string{
		"jürgen@bücher.example", "JÜRGEN@BÜCHER.example.", "ju\u0308rgen@xn--bcher-kva.example", "用户@例子.example",
		"пользователь@почта.рф", "a@xn--bcher-kva.example", "a@xn--zz.example", "a@bücher.xn--zz", "evil\u202e@x.example",
		"a\u200b@x.example", "a\u00a0b@x.example", "a\u0085@x.example", "a\ue000@x.example", "a\ufeff@x.example", "j\xfcrgen@x.example",
		"a@b\xfc.example", "\"jü@evil\"@x.example", "jü@x@y", "ü@[127.0.0.1]", "a@-ü.example", "a@ü-.example", "a@ü..example",
		"a@ü_x.example", "a@ß.example", "a@ＥＸＡＭＰＬＥ.test", "a@例子。example", "\u037e@x.example", "\u212aate@x.example",
		"a@\u0661\u0662.example", "a@a\u05d0.example", "a@\u200d.example", strings.Repeat("ü", 32) + "@x", strings.Repeat("ü", 33) + "@x",
		"a@" + strings.Repeat("ü", 60) + ".example", "ü@\U0001F600.example", "\U0001F600@x.example",
	} {
		f.Add(s)
	}
	known := []error{errBadAddress, errNonASCII, errAddrLiteral, errTooLongLocal}
	f.Fuzz(func(t *testing.T, s string) {
		checkUTF8Mode(t, s)
		a, err := ParseAddress(s)
		if err != nil {
			for _, k := range known {
				if err == k {
					return
				}
			}
			t.Fatalf("ParseAddress(%q): unexpected error %v", s, err)
		}
		if a.Local == "" || len(a.Local) > 64 || strings.ContainsAny(a.Local, "@ <>\\\"") {
			t.Fatalf("ParseAddress(%q): bad local part %q", s, a.Local)
		}
		for _, part := range []string{a.Local, a.Domain} {
			for i := 0; i < len(part); i++ {
				if ch := part[i]; ch < 0x21 || ch > 0x7e {
					t.Fatalf("ParseAddress(%q) = %q: byte %#x", s, a, ch)
				}
			}
		}
		if a.Domain != strings.ToLower(a.Domain) || strings.HasSuffix(a.Domain, ".") || !ValidHostname(a.Domain) {
			t.Fatalf("ParseAddress(%q): domain %q not normalized or not a host name", s, a.Domain)
		}
		// The plain reading: local part as given, domain lower-cased
		// without its trailing dot.
		at := strings.IndexByte(s, '@')
		if want := s[:at+1] + strings.ToLower(strings.TrimSuffix(s[at+1:], ".")); a.String() != want {
			t.Fatalf("ParseAddress(%q).String() = %q, want %q", s, a.String(), want)
		}
		b, err := ParseAddress(a.String())
		if err != nil || b != a {
			t.Fatalf("ParseAddress(%q) = %q, but its String() parses to %q, %v", s, a, b, err)
		}
	})
}

// checkUTF8Mode: ParseAddressUTF8 returns a known error, or an address
// whose local part is valid, NFC, graphic UTF-8 without the characters
// ASCII mode refuses, and whose domain is a lower-case A-label host name;
// it accepts all that ParseAddress accepts, the same way, and parses its
// own output to the same address.
func checkUTF8Mode(t *testing.T, s string) {
	a, err := ParseAddressUTF8(s)
	if err != nil {
		switch err {
		case errBadAddress, errAddrLiteral, errTooLongLocal, errBadUTF8:
		default:
			t.Fatalf("ParseAddressUTF8(%q): unexpected error %v", s, err)
		}
		if _, aerr := ParseAddress(s); aerr == nil {
			t.Fatalf("ParseAddressUTF8(%q) refuses (%v) what ParseAddress accepts", s, err)
		}
		return
	}
	if a.Local == "" || len(a.Local) > 64 || strings.ContainsAny(a.Local, "@ <>\\\"") || !utf8.ValidString(a.Local) || !norm.NFC.IsNormalString(a.Local) {
		t.Fatalf("ParseAddressUTF8(%q): bad local part %q", s, a.Local)
	}
	for _, r := range a.Local {
		if r < 0x21 || r == 0x7f || r >= 0x80 && (!unicode.IsGraphic(r) || unicode.IsSpace(r)) {
			t.Fatalf("ParseAddressUTF8(%q): rune %U in the local part", s, r)
		}
	}
	if !IsASCII(a.Domain) || a.Domain != strings.ToLower(a.Domain) || strings.HasSuffix(a.Domain, ".") || !ValidHostname(a.Domain) {
		t.Fatalf("ParseAddressUTF8(%q): domain %q not an A-label host name", s, a.Domain)
	}
	if d, ok := CanonicalDomain(a.Domain); !ok || d != a.Domain {
		t.Fatalf("ParseAddressUTF8(%q): domain %q not canonical (%q)", s, a.Domain, d)
	}
	if b, err := ParseAddressUTF8(a.String()); err != nil || b != a {
		t.Fatalf("ParseAddressUTF8(%q) = %q, but its String() parses to %q, %v", s, a, b, err)
	}
	if b, err := ParseAddress(s); err == nil && b != a {
		t.Fatalf("ParseAddress(%q) = %q, ParseAddressUTF8 = %q", s, b, a)
	}
	if !IsASCII(a.Local) {
		if _, err := ParseAddress(a.String()); err != errNonASCII {
			t.Fatalf("ParseAddress(%q) without SMTPUTF8: %v, want 553 5.6.7", a, err)
		}
	}
}

func FuzzValidHostname(f *testing.F) {
	for _, s := range []string{
		"mail.example.test", "MAIL.Example.TEST.", "localhost", "x", "", ".", "..", "a..b", "-a.b", "a-.b",
		"a_b.example", "1.2.3.4", "1.2.3.4.", "::1", "[127.0.0.1]", "999.1.1.1", "1.2.3",
		strings.Repeat("a", 63) + ".example", strings.Repeat("a", 64) + ".example", strings.Repeat("a.", 126) + "a",
		"bücher.example", "xn--bcher-kva.example", "℃.example", "ǅ.example", "a b", "a\x00b", "a\r\nb",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ok := ValidHostname(s)
		if !ok {
			return
		}
		// A valid host name is plain ASCII: letters, digits, hyphens,
		// underscores and dots, whatever the case folding does.
		if !isASCII(s) {
			t.Fatalf("ValidHostname(%q) = true for a name that is not ASCII (it goes raw into Received and DNS queries)", s)
		}
		n := strings.TrimSuffix(strings.ToLower(s), ".")
		if n == "" || len(n) > 253 {
			t.Fatalf("ValidHostname(%q) = true, length %d", s, len(n))
		}
		for _, label := range strings.Split(n, ".") {
			if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
				t.Fatalf("ValidHostname(%q) = true with label %q", s, label)
			}
			for i := 0; i < len(label); i++ {
				if ch := label[i]; !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
					t.Fatalf("ValidHostname(%q) = true with byte %#x", s, ch)
				}
			}
		}
		if !ValidHostname(strings.ToUpper(s)) || !strings.HasSuffix(s, ".") && !ValidHostname(s+".") {
			t.Fatalf("ValidHostname(%q): upper case or a trailing dot changes the answer", s)
		}
		a, err := ParseAddress("postmaster@" + s)
		if err != nil || a.Domain != n {
			t.Fatalf("ValidHostname(%q) = true but ParseAddress(postmaster@...) = %q, %v", s, a, err)
		}
	})
}

// quoteComment escapes s for a header comment (RFC 5322 quoted-pair).
func quoteComment(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if ch := s[i]; ch == '\\' || ch == '(' || ch == ')' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func quoteString(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if ch := s[i]; ch == '\\' || ch == '"' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isToken reports whether s is a plain authserv-id token: no white space,
// comment, quote or semicolon.
func isToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n;()\\\"")
}

func FuzzAuthservID(f *testing.F) {
	for _, s := range []struct{ value, comment, id string }{
		{" mail.example.test; dmarc=pass", "", "mail.example.test"},
		{" ((nested)) mail.example.test; dmarc=pass", "a(b)c", "mail.example.test."},
		{" (a\\) b) mail.example.test; dmarc=pass", "a)b", "MAIL.example.test"},
		{" \"mail.example.test\"; dmarc=pass", "x\\y", "relay.example.org"},
		{"\r\n\tMAIL.example.test 1; spf=pass", "", "a"},
		{" (unclosed mail.example.test; spf=pass", "((", "x.y"},
		{" \"unclosed; spf=pass", "", "mail.example.test"},
		{"", "", "é.example"},
		{"\\", ")", "\"quoted\\\\\""},
	} {
		f.Add(s.value, s.comment, s.id)
	}
	f.Fuzz(func(t *testing.T, value, comment, id string) {
		got := authservID(value)
		if !strings.ContainsAny(value, "\"\\") && strings.ContainsAny(got, " \t\r\n;(") {
			t.Fatalf("authservID(%q) = %q: white space, comment or semicolon in an unquoted id", value, got)
		}
		if got != strings.ToLower(got) {
			t.Fatalf("authservID(%q) = %q: not lower case", value, got)
		}
		want := strings.ToLower(strings.TrimSuffix(id, "."))
		// A comment before the id and the results after it never change it.
		if isToken(id) {
			for _, v := range []string{
				id,
				" " + id + "; " + value,
				" (" + quoteComment(comment) + ") " + id + " 1; " + value,
				"\r\n\t(" + quoteComment(comment) + ")" + id + "(" + quoteComment(comment) + ");" + value,
			} {
				if got := authservID(v); got != want {
					t.Fatalf("authservID(%q) = %q, want %q", v, got, want)
				}
			}
		}
		// A quoted id is unquoted as it is.
		v := " (" + quoteComment(comment) + ") \"" + quoteString(id) + "\"; " + value
		if got := authservID(v); got != want {
			t.Fatalf("authservID(%q) = %q, want %q", v, got, want)
		}
	})
}

// refHeaderEnd is where the header section of b ends (the empty line's
// start), found differently from removeHeaderFields: the first CRLFCRLF,
// or a CRLF at the very start.
func refHeaderEnd(b []byte) (end int, complete bool) {
	if bytes.HasPrefix(b, []byte("\r\n")) {
		return 0, true
	}
	if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
		return i + 2, true
	}
	return len(b), false
}

// refRemove is a line-based reference of removeHeaderFields: the header
// section split into lines, a line starting with white space joined to
// the field before it.
func refRemove(b []byte, drop func(name, value []byte) bool) (out []byte, fields, dropped int) {
	end, _ := refHeaderEnd(b)
	type span struct{ from, to int }
	var groups []span
	from := 0
	for _, line := range bytes.SplitAfter(b[:end], []byte("\r\n")) {
		if len(line) == 0 {
			continue
		}
		to := from + len(line)
		if len(groups) > 0 && (line[0] == ' ' || line[0] == '\t') {
			groups[len(groups)-1].to = to
		} else {
			groups = append(groups, span{from, to})
		}
		from = to
	}
	for _, sp := range groups {
		g := b[sp.from:sp.to]
		if colon := bytes.IndexByte(g, ':'); colon > 0 {
			fields++
			if drop(bytes.TrimRight(g[:colon], " \t"), g[colon+1:]) {
				dropped++
				continue
			}
		}
		out = append(out, g...)
	}
	return append(out, b[end:]...), fields, dropped
}

func readAll(t *testing.T, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func FuzzRemoveHeaderFields(f *testing.F) {
	for _, s := range []struct {
		body string
		mode byte
	}{
		{"Received: from a\r\nAuthentication-Results: mail.example.test; spf=pass\r\nFrom: <a@b>\r\n\r\nbody\r\n", 1},
		{"Authentication-Results: mail.example.test;\r\n\tdkim=pass\r\nSubject: x\r\n\r\nAuthentication-Results: body\r\n", 1},
		{"Subject: x\r\nAuthentication-Results : mail.example.test; spf=pass\r\n", 1},
		{"no colon line\r\nX-Drop: 1\r\n  folded\r\nKeep: 2\r\n\r\n", 3},
		{" leading: white space\r\nX-Drop: y\r\n\r\n", 1},
		{"\r\nX-Drop: in the body\r\n", 1},
		{"Keep: 1\r\nX-Drop: a\r\n \r\n\r\nbody", 1},
		{"A: 1\r\nB: 2\r\nC: 3\r\n\r\n", 3},
		{"X-Drop:\r\n\r\n", 0},
		{"", 1},
		{":\r\n\r\n", 2},
		{"A: b\rc\nd\r\n\r\n", 1},
	} {
		f.Add([]byte(s.body), s.mode)
	}
	f.Fuzz(func(t *testing.T, body []byte, mode byte) {
		// A pure predicate (the same answer for the same field), so the
		// reference and a second pass see the same decisions.
		drop := func(name, value []byte) bool {
			switch mode % 4 {
			case 0:
				return false
			case 1:
				return bytes.EqualFold(name, []byte("Authentication-Results")) || bytes.HasPrefix(name, []byte("X-Drop"))
			case 2:
				return true
			default:
				return len(value)%2 == 1
			}
		}
		want, fields, wantDropped := refRemove(body, drop)

		calls, dropped := 0, 0
		m := NewMessage(body)
		err := m.removeHeaderFields(func(name, value []byte) bool {
			calls++
			if bytes.IndexByte(name, ':') >= 0 {
				t.Fatalf("field name %q", name)
			}
			d := drop(name, value)
			if d {
				dropped++
			}
			return d
		})
		if err != nil {
			t.Fatalf("removeHeaderFields: %v", err)
		}
		if calls != fields || dropped != wantDropped {
			t.Fatalf("removeHeaderFields saw %d fields and dropped %d; the reference %d and %d", calls, dropped, fields, wantDropped)
		}
		got := readAll(t, m.Body())
		if !bytes.Equal(got, want) {
			t.Fatalf("removeHeaderFields(%q): body\n%q\nwant\n%q", body, got, want)
		}
		if int64(len(got)) != m.Size() || len(got) > len(body) {
			t.Fatalf("Size() = %d, body %d bytes, input %d bytes", m.Size(), len(got), len(body))
		}
		if wantDropped == 0 && !bytes.Equal(got, body) {
			t.Fatalf("nothing dropped but the body changed")
		}
		// Every way of reading the message gives the same bytes.
		m.AddHeader("Received", "from test")
		whole := readAll(t, m.Reader())
		var w bytes.Buffer
		n, err := m.WriteTo(&w)
		if err != nil || n != int64(w.Len()) {
			t.Fatalf("WriteTo = %d, %v; wrote %d", n, err, w.Len())
		}
		if !bytes.Equal(w.Bytes(), whole) {
			t.Fatalf("removeHeaderFields(%q) (%d of %d fields dropped): WriteTo writes\n%q\nbut Reader gives\n%q", body, dropped, calls, w.Bytes(), whole)
		}
		// A second pass finds nothing more to drop.
		if mode%4 != 3 {
			again := NewMessage(got)
			if err := again.removeHeaderFields(drop); err != nil || again.head != nil || again.skip != 0 {
				t.Fatalf("second pass over %q: err %v, head %q, skip %d", got, err, again.head, again.skip)
			}
		}
		// A spooled message gives the same result as one in memory.
		if len(body) > 0 {
			fm := spooledMessage(t, body)
			defer fm.Discard()
			if err := fm.removeHeaderFields(drop); err != nil {
				t.Fatalf("spooled: %v", err)
			}
			if fb := readAll(t, fm.Body()); !bytes.Equal(fb, want) || fm.Size() != int64(len(want)) {
				t.Fatalf("spooled: body %q, size %d; want %q", fb, fm.Size(), want)
			}
		}
	})
}

// spooledMessage is body as a message spooled to a file.
func spooledMessage(t *testing.T, body []byte) *Message {
	t.Helper()
	name := filepath.Join(t.TempDir(), "spool")
	if err := os.WriteFile(name, body, 0o600); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	return &Message{file: fh, size: int64(len(body))}
}

// refLineEnds: every CR is followed by LF and every LF follows a CR.
func refLineEnds(b []byte) bool {
	for i, ch := range b {
		if ch == '\r' && (i+1 >= len(b) || b[i+1] != '\n') || ch == '\n' && (i == 0 || b[i-1] != '\r') {
			return false
		}
	}
	return true
}

func FuzzCheckLineEnds(f *testing.F) {
	for _, s := range []string{
		"", "a\r\nb\r\n", "\r", "\n", "\r\r\n", "a\nb", "a\rb", "\r\n\r\n.\r\n", "x\r", "\n\r", strings.Repeat("ab\r\n", 20),
	} {
		f.Add([]byte(s), uint16(1), uint16(2))
	}
	f.Fuzz(func(t *testing.T, b []byte, cut1, cut2 uint16) {
		want := refLineEnds(b)
		// One chunk, then the same bytes in up to three chunks (a CR at
		// the end of one, its LF at the start of the next).
		var prevCR bool
		if got := checkLineEnds(b, &prevCR) && !prevCR; got != want {
			t.Fatalf("checkLineEnds(%q) = %v (prevCR %v), want %v", b, got, prevCR, want)
		}
		i := min(int(cut1), len(b))
		j := min(i+int(cut2), len(b))
		prevCR = false
		ok := true
		for _, chunk := range [][]byte{b[:i], b[i:j], b[j:]} {
			if ok {
				ok = checkLineEnds(chunk, &prevCR)
			}
		}
		if got := ok && !prevCR; got != want {
			t.Fatalf("checkLineEnds(%q in chunks at %d, %d) = %v, want %v", b, i, j, got, want)
		}
		// And as readMessage sees them.
		m, err := readMessage(bytes.NewReader(b), newMemoryBudget(1<<20), t.TempDir())
		if want != (err == nil) || err != nil && !errors.Is(err, errBareLineEnd) {
			t.Fatalf("readMessage(%q) = %v, want bare-line-end refusal %v", b, err, !want)
		}
		if m != nil {
			if got := readAll(t, m.Body()); !bytes.Equal(got, b) {
				t.Fatalf("readMessage(%q) body %q", b, got)
			}
			m.Discard()
		}
	})
}

func FuzzSanitizeHeaderValue(f *testing.F) {
	for _, s := range []string{
		"plain", "folded\r\n\tvalue", "folded\r\n value", "inject\r\nBcc: x@y", "bare\rcr", "bare\nlf", "\r\n", "\r\n ",
		"x\r\n \r\nInjected: yes", "\r\r\n ", "\n\r\n\t", "end\r", "end\r\n", "mail.example.test;\r\n\tspf=pass",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got := sanitizeHeaderValue(v)
		if len(got) != len(v) {
			t.Fatalf("sanitizeHeaderValue(%q) = %q: length changed", v, got)
		}
		for i := 0; i < len(got); i++ {
			switch got[i] {
			case '\r':
				if i+2 >= len(got) || got[i+1] != '\n' || got[i+2] != ' ' && got[i+2] != '\t' {
					t.Fatalf("sanitizeHeaderValue(%q) = %q: CR at %d is not folding", v, got, i)
				}
			case '\n':
				if i == 0 || got[i-1] != '\r' {
					t.Fatalf("sanitizeHeaderValue(%q) = %q: LF at %d is not folding", v, got, i)
				}
			default:
				if got[i] != v[i] && got[i] != ' ' {
					t.Fatalf("sanitizeHeaderValue(%q) = %q: byte %d changed", v, got, i)
				}
			}
		}
		if strings.ContainsAny(v, "\r\n") == false && got != v {
			t.Fatalf("sanitizeHeaderValue(%q) = %q: changed a value without line ends", v, got)
		}
		if sanitizeHeaderValue(got) != got {
			t.Fatalf("sanitizeHeaderValue is not idempotent on %q", v)
		}
		// Added to a message, the value is one field: the message reads
		// back as exactly that field, then the body.
		m := NewMessage([]byte("Subject: s\r\n\r\nbody\r\n"))
		m.AddHeader("X-Test", v)
		fields := 0
		parsed := NewMessage(readAll(t, m.Reader()))
		if err := parsed.removeHeaderFields(func(name, value []byte) bool {
			fields++
			if fields == 1 && (string(name) != "X-Test" || string(value) != " "+got+"\r\n") {
				t.Fatalf("AddHeader(X-Test, %q): first field %q: %q", v, name, value)
			}
			return false
		}); err != nil || fields != 2 {
			t.Fatalf("AddHeader(X-Test, %q) made %d fields (%v): %q", v, fields, err, m.Header())
		}
	})
}

func FuzzCommentSafe(f *testing.F) {
	for _, s := range []string{
		"mail.example.test", "", "(comment)", "a\\b", "a b", "\r\n", "é", strings.Repeat("x", 64), strings.Repeat("y", 65),
		strings.Repeat("(", 100), "\x00\x7f\xff",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := commentSafe(s)
		if len(got) > 64 || len(got) != min(len(s), 64) {
			t.Fatalf("commentSafe(%q) = %q: %d bytes", s, got, len(got))
		}
		for i := 0; i < len(got); i++ {
			ch := got[i]
			if ch <= 0x20 || ch >= 0x7f || ch == '(' || ch == ')' || ch == '\\' {
				t.Fatalf("commentSafe(%q) = %q: byte %#x", s, got, ch)
			}
			if ch != s[i] && ch != '?' {
				t.Fatalf("commentSafe(%q) = %q: byte %d changed", s, got, i)
			}
		}
		// In a Received field it stays one comment.
		r := "from [127.0.0.1] (helo=" + got + ")"
		if authservID("("+got+") x") != "x" || strings.Count(r, "(") != 1 {
			t.Fatalf("commentSafe(%q) = %q breaks out of a comment", s, got)
		}
	})
}

var errFuzzAuth = errors.New("bad credentials")

// FuzzAuthLogin drives the LOGIN server with up to four client responses,
// with or without an initial response, and a password check that accepts
// one fixed account.
func FuzzAuthLogin(f *testing.F) {
	for _, s := range []struct {
		initial    bool
		r1, r2, r3 string
	}{
		{false, "", "alice@example.test", "demo-alice"},
		{true, "alice@example.test", "demo-alice", ""},
		{true, "alice@example.test", "wrong", "extra"},
		{false, "", "", ""},
		{true, "", "", ""},
		{false, "", "a\x00b", "\r\n"},
	} {
		f.Add(s.initial, []byte(s.r1), []byte(s.r2), []byte(s.r3), []byte("more"))
	}
	f.Fuzz(func(t *testing.T, initial bool, r1, r2, r3, r4 []byte) {
		type call struct{ user, pass string }
		var calls []call
		l := &loginServer{authenticate: func(u, p string) error {
			calls = append(calls, call{u, p})
			if u == "alice@example.test" && p == "demo-alice" {
				return nil
			}
			return errFuzzAuth
		}}
		// go-smtp calls Next(nil) without an initial response, and
		// Next(ir) with one (an empty one is like none).
		var responses [][]byte
		if initial && len(r1) > 0 {
			responses = [][]byte{r1, r2, r3, r4}
		} else {
			responses = [][]byte{nil, r1, r2, r3, r4}
		}
		user := responses[len(responses)-4]
		if initial && len(r1) > 0 {
			user = r1
		}
		pass := responses[len(responses)-3]
		done := false
		for i, resp := range responses {
			challenge, fin, err := l.Next(resp)
			switch {
			case done:
				// Anything after the end is refused, never a second login.
				if fin || !errors.Is(err, sasl.ErrUnexpectedClientResponse) {
					t.Fatalf("step %d after the end: %q, %v, %v", i, challenge, fin, err)
				}
			case fin:
				done = true
				if len(calls) != 1 || calls[0].user != string(user) || calls[0].pass != string(pass) {
					t.Fatalf("authenticate calls %q, want one with %q, %q", calls, user, pass)
				}
				ok := string(user) == "alice@example.test" && string(pass) == "demo-alice"
				if ok != (err == nil) || !ok && !errors.Is(err, errFuzzAuth) {
					t.Fatalf("login %q/%q: %v", user, pass, err)
				}
				if challenge != nil {
					t.Fatalf("final challenge %q", challenge)
				}
			default:
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if len(calls) != 0 {
					t.Fatalf("authenticate called before the password: %q", calls)
				}
				want := "Password:"
				if i == 0 && len(resp) == 0 {
					want = "Username:"
				}
				if string(challenge) != want {
					t.Fatalf("step %d: challenge %q, want %q", i, challenge, want)
				}
			}
		}
		if !done || len(calls) != 1 {
			t.Fatalf("no result after %d responses (%d authenticate calls)", len(responses), len(calls))
		}
	})
}

// Regressions the fuzzers found (kept as plain tests: each failed once).
func TestFuzzRegressions(t *testing.T) {
	if ValidHostname("\u212a.example") || ValidHostname("mail.\u212aelvin.example") {
		t.Error("a name with a Kelvin sign passes as a host name")
	}
	m := NewMessage([]byte("Authentication-Results: mail.example.test; dkim=pass\r\n\r\nbody\r\n"))
	if err := m.removeHeaderFields(func(name, _ []byte) bool { return true }); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	m.WriteTo(&b)
	if strings.Contains(b.String(), "Authentication-Results") {
		t.Errorf("WriteTo kept a removed field when it was the only one: %q", b.String())
	}
}
