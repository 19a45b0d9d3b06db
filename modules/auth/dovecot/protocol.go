package dovecot

import (
	"errors"
	"strings"
)

// The line protocols of Dovecot's auth service: lines of tab-separated
// fields ending in "\n", a command first. Both the auth-client protocol
// (AUTH, answered by OK/FAIL/CONT) and the auth-master protocol (USER,
// answered by USER/NOTFOUND/FAIL) put the request ID second.

// maxLine is the longest reply line read; Dovecot's own clients allow
// 8 KiB for auth-client and 64 KiB for auth-master (userdb fields).
const maxLine = 64 * 1024

// reply is one parsed line from the auth service.
type reply struct {
	Cmd string
	// ID is the request ID (the second field) of a reply to a request;
	// "" for handshake lines.
	ID string
	// Args are the fields after the ID, unescaped.
	Args []string
}

var errBadLine = errors.New("malformed line from the auth service")

// parseReply parses one line (without its "\n"). Lines that answer a
// request (OK, FAIL, CONT, USER, NOTFOUND, PASS) must have a numeric
// ID; other commands (VERSION, MECH, SPID, DONE ...) keep all their
// fields in Args.
func parseReply(line string) (reply, error) {
	line = strings.TrimSuffix(line, "\r")
	if line == "" {
		return reply{}, errBadLine
	}
	fields := strings.Split(line, "\t")
	r := reply{Cmd: fields[0]}
	if r.Cmd == "" {
		return reply{}, errBadLine
	}
	rest := fields[1:]
	switch r.Cmd {
	case "OK", "FAIL", "CONT", "USER", "NOTFOUND", "PASS":
		if len(rest) == 0 || !isID(rest[0]) {
			return reply{}, errBadLine
		}
		r.ID, rest = rest[0], rest[1:]
	}
	for _, f := range rest {
		r.Args = append(r.Args, unescape(f))
	}
	return r, nil
}

// isID reports whether s is a request ID as we send them: 1 to 10
// decimal digits.
func isID(s string) bool {
	if s == "" || len(s) > 10 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// param returns the value of key=value in args (a bare key gives ""),
// and whether it was there.
func (r reply) param(key string) (string, bool) {
	for _, a := range r.Args {
		k, v, _ := strings.Cut(a, "=")
		if k == key {
			return v, true
		}
	}
	return "", false
}

// tempFail reports whether a FAIL reply says the failure is temporary
// (the passdb or userdb could not be reached): "code=temp_fail" in
// Dovecot 2.3 and later, a bare "temp" before.
func (r reply) tempFail() bool {
	if c, ok := r.param("code"); ok && c == "temp_fail" {
		return true
	}
	_, ok := r.param("temp")
	return ok
}

// escape is Dovecot's str_tabescape: \001 is the escape character, and
// it, NUL, tab, CR and LF become \001 followed by 1, 0, t, r, n.
func escape(s string) string {
	if !strings.ContainsAny(s, "\x00\x01\t\r\n") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case 0x00:
			b.WriteString("\x010")
		case 0x01:
			b.WriteString("\x011")
		case '\t':
			b.WriteString("\x01t")
		case '\r':
			b.WriteString("\x01r")
		case '\n':
			b.WriteString("\x01n")
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// unescape is Dovecot's str_tabunescape: the inverse of escape; an
// escape character before anything else is dropped and that character
// kept, as Dovecot does.
func unescape(s string) string {
	if !strings.Contains(s, "\x01") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != 0x01 || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		i++
		switch s[i] {
		case '0':
			b.WriteByte(0x00)
		case '1':
			b.WriteByte(0x01)
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case 'n':
			b.WriteByte('\n')
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}
