package smtpapp

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// Errors that accounts providers return.
var (
	ErrAuthFailed = errors.New("authentication failed")
	ErrNoSuchUser = errors.New("no such user")
)

// Replies of the session.
var (
	replyAuthFailed        = Errorf(535, [3]int{5, 7, 8}, "Authentication credentials invalid")
	replyAuthRequired      = Errorf(530, [3]int{5, 7, 0}, "Authentication required")
	replyAuthTemp          = Errorf(454, [3]int{4, 7, 0}, "Temporary authentication failure")
	replyAuthLockout       = Errorf(421, [3]int{4, 7, 0}, "Too many failed authentications from your network, try again later")
	replyNoSuchUser        = Errorf(550, [3]int{5, 1, 1}, "Recipient address rejected: no such mailbox here")
	replyRelayDenied       = Errorf(554, [3]int{5, 7, 1}, "Relay access denied")
	replySenderNotOwned    = Errorf(553, [3]int{5, 7, 1}, "Sender address not owned by the authenticated user")
	replyNullSender        = Errorf(553, [3]int{5, 7, 1}, "The null sender is not allowed for authenticated users")
	replyLocalSender       = Errorf(550, [3]int{5, 7, 1}, "Sender address in a local domain: authenticate first")
	replyTempLookup        = Errorf(451, [3]int{4, 3, 0}, "Temporary failure looking up the recipient, try again later")
	replyDeliveryFailed    = Errorf(451, [3]int{4, 3, 0}, "Temporary local problem storing the message, try again later")
	replyBusy              = Errorf(451, [3]int{4, 3, 1}, "Insufficient system resources, try again later")
	replyIncomplete        = Errorf(451, [3]int{4, 3, 0}, "Message incomplete, not stored")
	replyBareLineEnd       = Errorf(550, [3]int{5, 6, 0}, "Bare CR or LF in message; lines must end with CRLF")
	replyLongBodyLine      = Errorf(550, [3]int{5, 6, 0}, "Message has a line over the length limit")
	replyTooManyErrors     = Errorf(421, [3]int{4, 7, 0}, "Too many errors, closing connection")
	replyTooManyAuth       = Errorf(421, [3]int{4, 7, 0}, "Too many failed authentications, closing connection")
	replyTooManyMessages   = Errorf(421, [3]int{4, 7, 0}, "Too many messages in one session, closing connection")
	replySpam              = Errorf(550, [3]int{5, 7, 1}, "Message refused as spam")
	replyTooManyHops       = Errorf(554, [3]int{5, 4, 6}, "Too many hops (Received header fields): mail loop")
	replyAuthInTransaction = Errorf(503, [3]int{5, 5, 1}, "AUTH is not allowed during a mail transaction")
	replyHeaderTooLarge    = Errorf(552, [3]int{5, 3, 4}, "Message header section too large")
	replyNestedMail        = Errorf(503, [3]int{5, 5, 1}, "Nested MAIL command")
	replyAuthzid           = Errorf(535, [3]int{5, 7, 8}, "Authorization identity must match the login")
	replyInternal          = Errorf(421, [3]int{4, 3, 0}, "Internal error, closing connection")
)

// Replies of the wire: commands it answers itself.
var (
	replyBareLFCommand  = Errorf(500, [3]int{5, 5, 2}, "Bare CR or LF received; SMTP commands must end with CRLF")
	replyLineTooLong    = Errorf(500, [3]int{5, 5, 2}, "Line too long, closing connection")
	replyControlChars   = Errorf(501, [3]int{5, 5, 2}, "Syntax error: control characters are not allowed")
	replyUnknownCommand = Errorf(500, [3]int{5, 5, 2}, "Syntax error: command unrecognized")
	replyGreetFirst     = Errorf(503, [3]int{5, 5, 1}, "Bad sequence of commands: send EHLO first")
	replyGreetSyntax    = Errorf(501, [3]int{5, 5, 4}, "Syntax error: EHLO/HELO needs a domain or address literal")
	replyAuthNeedsTLS   = Errorf(530, [3]int{5, 7, 0}, "Must issue a STARTTLS command first")
	replyDataAfterBDAT  = Errorf(503, [3]int{5, 5, 1}, "Bad sequence of commands: DATA during a BDAT transfer")
	replyBDATSize       = Errorf(501, [3]int{5, 5, 4}, "Syntax error: unreadable BDAT chunk size, closing connection")
	replyBDATSyntax     = Errorf(501, [3]int{5, 5, 4}, "Syntax error: BDAT takes a size and an optional LAST")
	replyBDATNeedsEHLO  = Errorf(503, [3]int{5, 5, 1}, "Bad sequence of commands: BDAT needs EHLO (CHUNKING)")
	replyChunkTooLarge  = Errorf(552, [3]int{5, 3, 4}, "Chunk over the message size limit, closing connection")
	replyStartTLSArg    = Errorf(501, [3]int{5, 5, 4}, "Syntax error: STARTTLS takes no argument")
	replyTLSAlready     = Errorf(503, [3]int{5, 5, 1}, "Bad sequence of commands: TLS is already active")
	replyNoTLS          = Errorf(502, [3]int{5, 5, 1}, "STARTTLS not available")
	replyTLSInMail      = Errorf(503, [3]int{5, 5, 1}, "Bad sequence of commands: STARTTLS in a mail transaction")
	replyReadyTLS       = Errorf(220, [3]int{2, 0, 0}, "Ready to start TLS")
	replyRequireTLS     = Errorf(530, [3]int{5, 7, 10}, "REQUIRETLS needs a TLS session")
	replyTooManyJunk    = Errorf(421, [3]int{4, 7, 0}, "Too many commands that move no mail, closing connection")
	replyHTTP           = Errorf(221, [3]int{2, 7, 0}, "This is an SMTP server, not HTTP; goodbye")
	replyIdleTimeout    = Errorf(421, [3]int{4, 4, 2}, "Timeout, closing connection")
	replyShuttingDown   = Errorf(421, [3]int{4, 3, 2}, "Service shutting down, closing connection")
	replyTooBusy        = Errorf(421, [3]int{4, 7, 0}, "Too many connections, try again later")
	replyTooManyFromYou = Errorf(421, [3]int{4, 7, 0}, "Too many connections from your network, try again later")
)

// goSMTPReplies are the replies go-smtp (v0.25) makes up itself that RFC
// 5321, 1869 and 4954 give another code, and what the client gets
// instead. Keys are go-smtp's reply lines exactly; a reply not listed
// goes out as it is (TestGoSMTPReplyTable lists them all).
var goSMTPReplies = map[string]string{
	// Wrong sequence is 503 (RFC 5321 4.2.4); 502 means "not implemented".
	"502 5.5.1 Please introduce yourself first.\r\n":                              "503 5.5.1 Bad sequence of commands: send EHLO first\r\n",
	"502 5.5.1 Missing MAIL FROM command.\r\n":                                    "503 5.5.1 Bad sequence of commands: send MAIL first\r\n",
	"502 5.5.1 Missing RCPT TO command.\r\n":                                      "503 5.5.1 Bad sequence of commands: no valid recipients\r\n",
	"502 5.5.1 MAIL not allowed during message transfer\r\n":                      "503 5.5.1 Bad sequence of commands: MAIL during a BDAT transfer\r\n",
	"502 5.5.1 RCPT not allowed during message transfer\r\n":                      "503 5.5.1 Bad sequence of commands: RCPT during a BDAT transfer\r\n",
	"502 5.5.1 DATA not allowed during message transfer\r\n":                      "503 5.5.1 Bad sequence of commands: DATA during a BDAT transfer\r\n",
	"502 5.5.1 DATA not allowed for BINARYMIME messages\r\n":                      "503 5.5.1 Bad sequence of commands: DATA for a BINARYMIME message\r\n",
	"502 5.5.1 Already running in TLS\r\n":                                        "503 5.5.1 Bad sequence of commands: TLS is already active\r\n",
	"500 5.5.2 Error: bad syntax\r\n":                                             "500 5.5.2 Syntax error: command unrecognized\r\n",
	"501 5.5.2 Bad command\r\n":                                                   "500 5.5.2 Syntax error: command unrecognized\r\n",
	"500 5.5.1 This is not a LMTP server\r\n":                                     "500 5.5.2 Syntax error: command unrecognized\r\n",
	"500 5.4.0 Too long line, closing connection\r\n":                             "500 5.5.2 Line too long, closing connection\r\n",
	"421 4.4.2 Idle timeout, bye bye\r\n":                                         "421 4.4.2 Timeout, closing connection\r\n",
	"500 5.5.1 Too many errors. Quiting now\r\n":                                  "421 4.7.0 Too many errors, closing connection\r\n",
	"500 5.5.4 Unknown MAIL FROM argument\r\n":                                    "555 5.5.4 MAIL FROM parameter not recognized or not implemented\r\n",
	"500 5.5.4 Unknown RCPT TO argument\r\n":                                      "555 5.5.4 RCPT TO parameter not recognized or not implemented\r\n",
	"500 5.5.4 Malformed AUTH parameter value\r\n":                                "501 5.5.4 Syntax error in the AUTH parameter\r\n",
	"500 5.5.4 Malformed AUTH parameter mailbox\r\n":                              "501 5.5.4 Syntax error in the AUTH parameter\r\n",
	"504 5.5.4 REQUIRETLS is not implemented\r\n":                                 "555 5.5.4 REQUIRETLS is not supported\r\n",
	"504 5.5.4 BINARYMIME is not implemented\r\n":                                 "555 5.5.4 BINARYMIME is not supported\r\n",
	"504 5.5.4 RET is not implemented\r\n":                                        "555 5.5.4 DSN (RET) is not supported\r\n",
	"504 5.5.4 ENVID is not implemented\r\n":                                      "555 5.5.4 DSN (ENVID) is not supported\r\n",
	"504 5.5.4 NOTIFY is not implemented\r\n":                                     "555 5.5.4 DSN (NOTIFY) is not supported\r\n",
	"504 5.5.4 ORCPT is not implemented\r\n":                                      "555 5.5.4 DSN (ORCPT) is not supported\r\n",
	"504 5.5.4 RRVS is not implemented\r\n":                                       "555 5.5.4 RRVS is not supported\r\n",
	"504 5.5.4 DELIVERBY is not implemented\r\n":                                  "555 5.5.4 DELIVERBY is not supported\r\n",
	"504 5.5.4 MT-PRIORITY is not implemented\r\n":                                "555 5.5.4 MT-PRIORITY is not supported\r\n",
	"502 5.5.4 Missing parameter\r\n":                                             "501 5.5.4 Syntax error: AUTH needs a mechanism\r\n",
	"523 5.7.10 TLS is required\r\n":                                              "530 5.7.0 Must issue a STARTTLS command first\r\n",
	"454 4.7.0 Invalid base64 data\r\n":                                           "501 5.5.2 Syntax error: invalid base64 in the SASL response\r\n",
	"501 5.0.0 Negotiation cancelled\r\n":                                         "501 5.7.0 Authentication cancelled\r\n",
	"454 4.7.0 sasl: unexpected client response\r\n":                              "501 5.5.2 Syntax error: unexpected SASL response\r\n",
	"454 4.7.0 sasl: invalid response\r\n":                                        "501 5.5.2 Syntax error: malformed SASL response\r\n",
	"554 5.0.0 Error: transaction failed: unexpected EOF\r\n":                     "451 4.3.0 Message incomplete, not stored\r\n",
	"554 5.0.0 Error: transaction failed: smtp: message transmission aborted\r\n": "451 4.3.0 Message incomplete, not stored\r\n",
}

// formatReply is an *Error as a reply line.
func formatReply(e *Error) string {
	ec := e.EnhancedCode
	return fmt.Sprintf("%d %d.%d.%d %s\r\n", e.Code, ec[0], ec[1], ec[2], e.Message)
}

// replyOf is the reply for a hook's error: the *Error it carries, or a
// temporary failure.
func replyOf(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return Errorf(451, [3]int{4, 3, 0}, "Temporary local problem, try again later")
}

// hasControl reports a control character other than TAB.
func hasControl(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return true
		}
	}
	return false
}

// splitCommand splits a command line into its upper-cased verb and its
// argument ("" if none).
func splitCommand(line []byte) (verb, arg string) {
	v, a, _ := bytes.Cut(line, []byte(" "))
	return upperVerb(v), string(bytes.Trim(a, " "))
}

// knownVerbs are the verbs upperVerb returns without allocating.
var knownVerbs = [...]string{"EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP", "AUTH", "STARTTLS"}

// upperVerb is upperASCII for a verb, without a copy for the known ones.
func upperVerb(v []byte) string {
	var buf [8]byte
	if len(v) <= len(buf) {
		u := buf[:len(v)]
		for i, c := range v {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			u[i] = c
		}
		for _, k := range knownVerbs {
			if string(u) == k {
				return k
			}
		}
	}
	return upperASCII(string(v))
}

// upperASCII upper-cases ASCII letters only: a verb with other bytes is
// no command, and must not grow into replacement runes.
func upperASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// cutSpace cuts s at its first space; the rest is trimmed of spaces.
func cutSpace(s string) (before, after string, found bool) {
	before, after, found = strings.Cut(s, " ")
	return before, strings.Trim(after, " "), found
}

// hasParam reports whether a MAIL/RCPT argument carries the ESMTP
// parameter name (alone or name=value), case-insensitively.
func hasParam(arg, name string) bool {
	for _, f := range strings.Fields(arg)[1:] {
		if k, _, _ := strings.Cut(f, "="); strings.EqualFold(k, name) {
			return true
		}
	}
	return false
}

// isHTTPVerb reports an HTTP request line or header field.
func isHTTPVerb(verb string) bool {
	switch verb {
	case "GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE", "TRACE", "PATCH":
		return true
	}
	return strings.HasSuffix(verb, ":") // "Host:", "User-Agent:"...
}
