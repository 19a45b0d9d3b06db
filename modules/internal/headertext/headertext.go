// Package headertext holds the text sanitizers that the handlers adding
// header fields (spf, dmarc) share.
package headertext

import "strings"

// Comment keeps a text from closing or nesting an RFC 5322 comment:
// parentheses and backslashes become '_', control and non-ASCII
// characters '?'.
func Comment(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '(' || r == ')' || r == '\\':
			return '_'
		case r < 0x20 || r >= 0x7f:
			return '?'
		}
		return r
	}, s)
}
