package smtpapp

import (
	"fmt"
	"strconv"
	"strings"
)

// commentSafe keeps printable ASCII other than parentheses and
// backslashes, for a header comment; at most 64 bytes.
func commentSafe(s string) string {
	b := make([]byte, 0, min(len(s), 64))
	for i := 0; i < len(s) && len(b) < 64; i++ {
		if ch := s[i]; ch > 0x20 && ch < 0x7f && ch != '(' && ch != ')' && ch != '\\' {
			b = append(b, ch)
		} else {
			b = append(b, '?')
		}
	}
	return string(b)
}

// authservID is the authserv-id of an Authentication-Results value:
// comments (nested, with escapes) and white space skipped, a quoted string
// unquoted, a trailing dot dropped, lower-cased.
func authservID(value string) string {
	var id strings.Builder
	depth, quoted := 0, false
	for i := 0; i < len(value); i++ {
		ch := value[i]
		switch {
		case ch == '\\' && (depth > 0 || quoted) && i+1 < len(value):
			i++
			if depth == 0 {
				id.WriteByte(value[i])
			}
		case depth > 0:
			switch ch {
			case '(':
				depth++
			case ')':
				depth--
			}
		case ch == '"':
			quoted = !quoted
		case quoted:
			id.WriteByte(ch)
		case ch == '(':
			depth = 1
		case ch == ';':
			i = len(value)
		case ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n':
			if id.Len() > 0 { // the id ends; a version may follow
				i = len(value)
			}
		default:
			id.WriteByte(ch)
		}
	}
	return strings.ToLower(strings.TrimSuffix(id.String(), "."))
}

// spfReceiver is the receiver= key of a Received-SPF value (RFC 7208
// 9.1), lower-cased, or "".
func spfReceiver(value string) string {
	for _, kv := range strings.FieldsFunc(value, func(r rune) bool { return r == ';' || r == ' ' || r == '\t' || r == '\r' || r == '\n' }) {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.EqualFold(k, "receiver") {
			return strings.ToLower(strings.TrimSuffix(strings.Trim(v, `"`), "."))
		}
	}
	return ""
}

func (s Score) reasonStrings() []string {
	out := make([]string, len(s.Reasons))
	for i, r := range s.Reasons {
		out[i] = fmt.Sprintf("%s(%+.1f): %s", r.Module, r.Points, r.Reason)
	}
	return out
}

func formatScore(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

func spamStatus(total, tag, reject float64, reasons []string) string {
	status := "No"
	if total >= tag {
		status = "Yes"
	}
	return fmt.Sprintf("%s, score=%.1f tag=%.1f reject=%.1f\r\n\t%s", status, total, tag, reject, strings.Join(reasons, "\r\n\t"))
}
