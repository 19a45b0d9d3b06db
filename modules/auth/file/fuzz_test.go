package file_test

import (
	"reflect"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/modules/auth/file"
)

// FuzzParseLine feeds lines of a users file to the parser: no panic, and
// an account it reads is written back by FormatLine as a line that reads
// as the same account.
func FuzzParseLine(f *testing.F) {
	for _, seed := range []string{
		"alice@example.test:$2a$10$abcdefghijklmnopqrstuv:al@example.test, a@example.test",
		"bob@example.test:$2a$10$x",
		"broken",
		"a:b:c:d",
		" spaced @example.test : hash : ,,x@y, ",
		"::",
		"\xff:\x00",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		a, err := file.ParseLine(line)
		if err != nil {
			return
		}
		again, err := file.ParseLine(file.FormatLine(a))
		if err != nil {
			t.Fatalf("%q: the formatted line %q does not parse: %v", line, file.FormatLine(a), err)
		}
		if !reflect.DeepEqual(a, again) {
			t.Errorf("%q: read %+v, then %+v", line, a, again)
		}
	})
}
