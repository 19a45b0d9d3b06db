package smtpapp

// bodyScan follows a message body as the wire hands it to go-smtp. For
// DATA (dots) it finds the CRLF.CRLF that ends the body and masks every
// bare CR or LF as a space: go-smtp's reader, which would take "\r\r\n.\r\n"
// for body text, then sees the same end as the wire. A masked body is never
// stored: the session refuses it for its bare line ends. For BDAT it only
// watches. Both note lines over the limit.
type bodyScan struct {
	dots    bool
	st      int
	pendCR  bool // a CR whose meaning depends on the next byte
	lineLen int

	bare, long, complete bool
}

const (
	lineStart = iota
	lineDot   // a "." at the start of a line
	lineMid
)

// bodyResult is what the wire saw of a message body.
type bodyResult struct {
	// Complete: DATA's terminator, or all of BDAT's last chunk, arrived.
	Complete bool
	// Bare: a CR or LF not part of a CRLF pair.
	Bare bool
	// Long: a line over the server's line limit.
	Long bool
}

func (s *bodyScan) result() bodyResult {
	return bodyResult{Complete: s.complete, Bare: s.bare, Long: s.long}
}

// mask copies DATA bytes from in to out (bare CR/LF masked), stopping
// after the end of the body. It returns the bytes written and read, and
// whether the body ended. out must have room for at least 3 bytes.
func (s *bodyScan) mask(out, in []byte, maxLine int) (n, used int, done bool) {
	for used < len(in) && n+3 <= len(out) {
		c := in[used]
		used++
		if s.pendCR {
			s.pendCR = false
			if c == '\n' {
				out[n], out[n+1] = '\r', '\n'
				n += 2
				if s.st == lineDot && s.dots {
					s.complete = true
					return n, used, true
				}
				s.st, s.lineLen = lineStart, 0
				continue
			}
			out[n] = ' '
			n++
			s.sawBare(maxLine)
		}
		switch c {
		case '\r':
			s.pendCR = true
			continue
		case '\n':
			c = ' '
			s.sawBare(maxLine)
			out[n] = c
			n++
			continue
		}
		s.sawByte(c, maxLine)
		out[n] = c
		n++
	}
	return n, used, false
}

// check watches BDAT bytes (handed over unchanged).
func (s *bodyScan) check(b []byte, maxLine int) {
	for _, c := range b {
		if s.pendCR {
			s.pendCR = false
			if c == '\n' {
				s.st, s.lineLen = lineStart, 0
				continue
			}
			s.sawBare(maxLine)
		}
		switch c {
		case '\r':
			s.pendCR = true
		case '\n':
			s.sawBare(maxLine)
		default:
			s.sawByte(c, maxLine)
		}
	}
}

// finish ends a BDAT body: a CR at its very end is bare.
func (s *bodyScan) finish() {
	if s.pendCR {
		s.bare = true
	}
	s.complete = true
}

func (s *bodyScan) sawBare(maxLine int) {
	s.bare = true
	s.sawByte(' ', maxLine)
}

func (s *bodyScan) sawByte(c byte, maxLine int) {
	if s.st == lineStart && c == '.' && s.dots {
		s.st = lineDot
	} else {
		s.st = lineMid
	}
	s.lineLen++
	if s.lineLen > maxLine-2 { // the limit counts the CRLF
		s.long = true
	}
}
