package smtpapp

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"
)

// wire is the client connection as go-smtp sees it. Every byte between the
// client and go-smtp passes through it, both ways, for the whole life of
// the connection: in plaintext, after STARTTLS and inside implicit TLS.
//
// Invariants:
//   - go-smtp gets one command line at a time, and the next one only once
//     it has answered the last: the wire always knows which command a
//     reply answers, and can answer a command itself, in order.
//   - A command line reaches go-smtp only if it ends in CRLF, holds no
//     other CR, LF or control character, fits the line limit, names a
//     command we serve and comes in sequence. The wire answers the rest.
//   - A message body reaches go-smtp framed as the wire framed it: DATA
//     ends at the first CRLF.CRLF and nowhere else (a bare CR or LF is
//     masked, so go-smtp's reader cannot see another end; the session
//     refuses such a message), and a BDAT chunk is its declared size or an
//     error, never a short chunk that looks complete.
//   - TLS, STARTTLS and implicit, ends here, beneath go-smtp, so all of
//     the above holds inside TLS too. After STARTTLS the client greets
//     again, and nothing it said before survives.
//   - Every final reply, whoever made it (go-smtp, the session, the wire),
//     is written by finalReply: one place that rewrites go-smtp's wrong
//     codes, counts 4xx/5xx toward max_errors and ends the connection.
//   - Once closing is set, nothing more is read: go-smtp sees the end of
//     the stream, the last reply is out, and Close shuts the write side
//     and drains the input briefly, so the client reads that reply
//     instead of a reset.
type wire struct {
	srv  *Server
	conn *Conn
	raw  net.Conn      // the TCP connection
	tr   net.Conn      // what the client speaks over: raw, or TLS on it
	br   *bufio.Reader // reads tr
	lim  *Limits

	implicitTLS bool
	offerTLS    bool // STARTTLS is offered (before TLS is up)
	tlsOn       bool
	deadline    time.Time // the session limit

	// What go-smtp reads next.
	mode      wireMode
	out       []byte
	chunkLeft int64 // BDAT bytes still to hand over
	lastChunk bool
	scan      bodyScan

	// The protocol, as the wire follows it.
	greeted   int // 0, greetHELO or greetEHLO
	inMail    bool
	bdat      bool   // a BDAT transfer is under way
	inflight  string // the command go-smtp is answering
	authReply bool   // a 334 was sent: the next line is a SASL response
	ehloLines int    // lines of the current EHLO reply written so far
	junk      int

	replyBuf     []byte
	pending      []byte       // lines of a reply not yet sent (see send)
	sessionReply atomic.Int32 // replyNone, or how the session's reply counts

	closing   atomic.Bool
	ended     atomic.Bool // the server ended the session's input (sessions.endAll)
	linger    bool        // closing after a reply: drain before closing
	quit      bool        // the reply was 221 to QUIT
	closeOnce sync.Once

	// Parking (park.go).
	parkAfter     time.Duration // idle time before parking; 0: never (or not a socket)
	parking       atomic.Bool   // go-smtp is letting go: Close waits instead
	parkDeadline  time.Time     // the read deadline the parked wait keeps
	resume        int           // resumeNone, or how far a resume has come
	sess          *session      // outlives go-smtp's connections across parks
	detached      bool          // no go-smtp connection has the session
	held          []byte        // a command waiting for go-smtp (attach)
	endOnGreeting bool          // go-smtp's greeting ends the parking registration
	waiting       atomic.Bool   // detached, waiting for a command line: a stop may wake it
	pollFD        int32         // the socket, while in the parking poller
	parkTimer     *time.Timer   // the read deadline, while in the poller
}

type wireMode int

const (
	modeCommand wireMode = iota
	modeData             // a DATA body, up to CRLF.CRLF
	modeChunk            // a BDAT chunk of known size
)

const (
	greetHELO = 1
	greetEHLO = 2
)

// How the session's reply to the current command counts.
const (
	replyNone      = 0
	replyCounted   = 1 // the client's fault: counts toward max_errors
	replyUncounted = 2 // ours (a local failure): does not
)

func newWire(srv *Server, raw net.Conn) *wire {
	lim := &srv.limits
	w := &wire{
		srv:         srv,
		raw:         raw,
		tr:          raw,
		lim:         lim,
		implicitTLS: srv.ImplicitTLS,
		offerTLS:    srv.tlsConfig != nil && !srv.ImplicitTLS && !(srv.TLS != nil && srv.TLS.DisableSTARTTLS),
		deadline:    time.Now().Add(time.Duration(lim.SessionTimeout)),
	}
	if canWaitReadable(raw) {
		w.parkAfter = max(time.Duration(lim.ParkIdleAfter), 0)
	}
	w.br = newLineReader(raw, lim.MaxLineLength)
	return w
}

// Read hands go-smtp the next command line, SASL response, body bytes or
// chunk bytes.
func (w *wire) Read(b []byte) (int, error) {
	if w.resume == resumeHello {
		w.out = w.replayHello()
	}
	for len(w.out) == 0 {
		if w.closing.Load() {
			if w.mode != modeCommand {
				return 0, io.ErrUnexpectedEOF // never a body that looks complete
			}
			return 0, io.EOF
		}
		switch w.mode {
		case modeData:
			return w.readBody(b)
		case modeChunk:
			return w.readChunk(b)
		}
		if err := w.nextCommand(); err != nil {
			return 0, err
		}
	}
	n := copy(b, w.out)
	if w.out = w.out[n:]; len(w.out) == 0 {
		w.out = nil // it points into the line buffer: let that go
	}
	return n, nil
}

// setReadDeadline arms the per-read timeout.
func (w *wire) setReadDeadline() { w.raw.SetReadDeadline(w.readDeadline()) }

// readDeadline is the per-read timeout from now, within the session limit
// (shorter while the server is under stress, see ceiling).
func (w *wire) readDeadline() time.Time {
	dl := w.deadline
	timeout := time.Duration(w.lim.ReadTimeout)
	if w.srv.ceiling.stress.Load() {
		timeout = min(timeout, stressTimeout)
	}
	if t := time.Now().Add(timeout); t.Before(dl) {
		dl = t
	}
	return dl
}

// readLine reads one line ended by CRLF. A line that is too long or ends
// otherwise is answered here and ends the connection (errWireClosed).
// A session idle long enough parks instead (errParked).
func (w *wire) readLine() ([]byte, error) {
	if w.mayPark() && w.idleUntilParked() {
		return nil, errParked
	}
	var line []byte
	var err error
	if w.detached {
		line, err = w.readDetachedLine()
	} else {
		w.setReadDeadline()
		line, err = w.br.ReadSlice('\n')
	}
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, w.refuseAndClose("line_too_long", "line too long", replyLineTooLong)
	case errors.Is(err, io.EOF) && w.ended.Load():
		w.shuttingDown()
		return nil, errWireClosed
	case err != nil:
		return nil, err
	case len(line) < 2 || line[len(line)-2] != '\r' || bytes.IndexByte(line[:len(line)-2], '\r') >= 0:
		return nil, w.refuseAndClose("bare_line_end", "bare CR or LF in command stream", replyBareLFCommand)
	}
	return line, nil
}

// readDetachedLine reads a line for a detached session, which a server
// stopping now may wake (parking.stop): the wake ends the wait with a
// timeout, and consumes nothing.
func (w *wire) readDetachedLine() ([]byte, error) {
	w.waiting.Store(true)
	defer w.waiting.Store(false)
	w.setReadDeadline()
	if w.srv.parking.current() == parkClosed { // the deadline first: see wakeParked
		return nil, os.ErrDeadlineExceeded
	}
	for {
		n := w.br.Buffered()
		if b, _ := w.br.Peek(n); n == w.br.Size() || bytes.IndexByte(b, '\n') >= 0 {
			return w.br.ReadSlice('\n') // a line, or ErrBufferFull
		}
		if _, err := w.br.Peek(n + 1); err != nil {
			return nil, err // nothing consumed
		}
	}
}

// errWireClosed ends go-smtp's loop after the wire has answered and is
// closing the connection.
var errWireClosed = io.EOF

// errParked ends go-smtp's loop for a session that parks (park.go).
var errParked = io.EOF

// nextCommand reads a command line and either forwards it to go-smtp
// (w.out) or answers it itself.
func (w *wire) nextCommand() error {
	line, err := w.readLine()
	if err != nil {
		return err
	}
	text := line[:len(line)-2]
	if w.authReply { // a SASL response, not a command
		w.authReply = false
		if hasControl(text) { // no valid response: go-smtp ends the exchange
			w.conn.Emit(Event{Kind: EventProtocolError, Detail: "control character in a SASL response"})
			line = []byte("*\r\n")
		}
		return w.forward(line, "AUTH")
	}
	if hasControl(text) {
		return w.refuse("control_character", "control character in command", replyControlChars)
	}
	verb, arg := splitCommand(text)
	if isHTTPVerb(verb) {
		return w.dropHTTP()
	}
	switch verb {
	case "EHLO", "HELO":
		return w.greeting(line, verb, arg)
	case "STARTTLS":
		return w.startTLS(arg)
	case "AUTH", "MAIL", "RCPT", "DATA":
		if w.greeted == 0 {
			return w.refuse("bad_sequence", "command before EHLO", replyGreetFirst)
		}
		switch {
		case verb == "AUTH" && !w.tlsOn:
			return w.refuse("auth_without_tls", "AUTH before TLS", replyAuthNeedsTLS)
		case verb == "DATA" && w.bdat:
			return w.refuse("bad_sequence", "DATA during BDAT", replyDataAfterBDAT)
		case verb == "RCPT":
			line = w.qualifyPostmaster(line, arg)
		case verb == "MAIL" && !w.tlsOn && hasParam(arg, "REQUIRETLS"):
			return w.refuse("requiretls_without_tls", "REQUIRETLS without TLS", replyRequireTLS)
		}
		return w.forward(line, verb)
	case "BDAT":
		return w.bdatCommand(line, arg)
	case "RSET", "NOOP", "VRFY", "EXPN", "HELP":
		if err := w.countJunk(); err != nil {
			return err
		}
		return w.forward(line, verb)
	case "QUIT":
		return w.forward(line, verb)
	}
	return w.refuse("unknown_command", "unrecognized command", replyUnknownCommand)
}

// forward hands a line to go-smtp; its reply will answer verb.
func (w *wire) forward(line []byte, verb string) error {
	w.out = line
	w.inflight = verb
	w.sessionReply.Store(replyNone)
	return nil
}

// greeting runs the HELO hooks itself: go-smtp would call the backend
// only for the first greeting, not for the one that must follow STARTTLS.
func (w *wire) greeting(line []byte, verb, arg string) error {
	// The name as go-smtp reads it (parseCmd, parseHelloArgument): the
	// first word of the argument trimmed of all white space. The wire
	// answers the greeting itself while detached, and replays the name.
	name, _, _ := strings.Cut(strings.TrimSpace(arg), " ")
	if name == "" {
		return w.refuse("syntax", "greeting without a name", replyGreetSyntax)
	}
	if w.greeted != 0 {
		if err := w.countJunk(); err != nil {
			return err
		}
	}
	c := w.conn
	c.setHelo(name)
	if err := w.srv.hooks.runHelo(c, name); err != nil {
		return w.sessionRefused(err)
	}
	w.ehloLines = 0
	return w.forward(line, verb)
}

// sessionRefused writes a refusal that a hook made (already logged,
// counted and reported by Conn.refuse).
func (w *wire) sessionRefused(err error) error {
	w.sessionReply.Store(replyNone) // written here, not by go-smtp
	e := replyOf(err)
	return w.finalReply([]byte(formatReply(e)), e.Code, true)
}

// qualifyPostmaster: RFC 5321 4.5.1 requires <postmaster> without a
// domain; go-smtp's parser wants one, so it gets the postmaster's.
func (w *wire) qualifyPostmaster(line []byte, arg string) []byte {
	const prefix = "TO:<POSTMASTER>"
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return line
	}
	domain := w.srv.app.postmasterDomain()
	if domain == "" {
		return line
	}
	return []byte("RCPT TO:<postmaster@" + domain + ">" + arg[len(prefix):] + "\r\n")
}

// countJunk counts a command that moves no mail forward (Postfix's
// smtpd_junk_command_limit); past the limit the connection ends.
func (w *wire) countJunk() error {
	w.junk++
	if w.junk <= w.lim.MaxJunkCommands {
		return nil
	}
	return w.refuseAndClose("junk_commands", "too many commands that move no mail", replyTooManyJunk)
}

// dropHTTP ends a connection that speaks HTTP at once, as Postfix does,
// so that a browser cannot be used to send SMTP commands.
func (w *wire) dropHTTP() error {
	w.conn.Logger().Info("refused", zap.String("stage", "command"), zap.String("reason", "HTTP request on the SMTP port"))
	w.srv.metrics.refused(w.srv.name, "command", "", "http")
	w.conn.Emit(Event{Kind: EventProtocolError, Detail: "HTTP request"})
	w.send([]byte(formatReply(replyHTTP)))
	w.closeAfterReply()
	return errWireClosed
}

// bdatCommand checks a BDAT command's framing before go-smtp sees it: a
// size that cannot be read loses the framing, and so the connection.
func (w *wire) bdatCommand(line []byte, arg string) error {
	sizeArg, rest, _ := cutSpace(arg)
	size, err := strconv.ParseUint(sizeArg, 10, 63)
	if err != nil || sizeArg == "" || sizeArg[0] == '+' {
		return w.refuseAndClose("bdat_syntax", "unreadable BDAT size", replyBDATSize)
	}
	last := false
	switch {
	case rest == "":
	case strings.EqualFold(rest, "LAST"):
		last = true
	default:
		w.skipChunk(int64(size))
		return w.refuse("bdat_syntax", "bad BDAT argument", replyBDATSyntax)
	}
	switch {
	case int64(size) > w.lim.MaxMessageSize:
		return w.refuseAndClose("too_large", "BDAT chunk over the size limit", replyChunkTooLarge)
	case w.greeted != greetEHLO: // CHUNKING is an ESMTP extension
		w.skipChunk(int64(size))
		return w.refuse("bad_sequence", "BDAT without EHLO", replyBDATNeedsEHLO)
	}
	if !w.bdat {
		w.scan = bodyScan{}
	}
	w.chunkLeft, w.lastChunk = int64(size), last
	switch {
	case size > 0:
		w.mode = modeChunk
	case last: // "BDAT 0 LAST" ends the message with no more bytes
		w.scan.finish()
	}
	return w.forward(line, "BDAT")
}

// skipChunk throws away the chunk of a refused BDAT command.
func (w *wire) skipChunk(n int64) {
	w.setReadDeadline()
	if _, err := w.br.Discard(int(min(n, int64(w.lim.MaxMessageSize)))); err != nil {
		w.closeAfterReply()
	}
}

// startTLS terminates STARTTLS here (RFC 3207).
func (w *wire) startTLS(arg string) error {
	switch {
	case arg != "":
		return w.refuse("syntax", "STARTTLS with an argument", replyStartTLSArg)
	case w.tlsOn:
		return w.refuse("bad_sequence", "STARTTLS under TLS", replyTLSAlready)
	case !w.offerTLS:
		return w.refuse("unknown_command", "STARTTLS not offered", replyNoTLS)
	case w.greeted == 0:
		return w.refuse("bad_sequence", "STARTTLS before EHLO", replyGreetFirst)
	case w.inMail:
		return w.refuse("bad_sequence", "STARTTLS in a mail transaction", replyTLSInMail)
	}
	// Whatever was sent after STARTTLS in the same packet is an injection
	// attempt (CVE-2011-0411 and kin): thrown away.
	if n := w.br.Buffered(); n > 0 {
		w.br.Discard(n)
		w.conn.Logger().Info("discarded bytes pipelined after STARTTLS", zap.Int("bytes", n))
		w.conn.Emit(Event{Kind: EventProtocolError, Detail: "command injection after STARTTLS"})
	}
	if err := w.send([]byte(formatReply(replyReadyTLS))); err != nil {
		return err
	}
	if err := w.handshake(); err != nil {
		w.conn.Logger().Info("refused", zap.String("stage", "starttls"), zap.String("reason", "TLS handshake failed"), zap.Error(err))
		w.srv.metrics.refused(w.srv.name, "starttls", "", "handshake")
		w.conn.Emit(Event{Kind: EventProtocolError, Detail: "TLS handshake failed"})
		w.conn.countError()
		w.closing.Store(true)
		return errWireClosed
	}
	// RFC 3207 4.2: forget everything learnt before TLS.
	w.conn.resetForTLS()
	w.greeted, w.junk = 0, 0
	w.resetTransaction()
	return nil
}

// handshake runs the server side of TLS over raw, within its own timeout.
func (w *wire) handshake() error {
	tc := tls.Server(w.raw, w.srv.tlsConfig)
	dl := time.Now().Add(time.Duration(w.lim.TLSHandshakeTimeout))
	if w.deadline.Before(dl) {
		dl = w.deadline
	}
	w.raw.SetDeadline(dl)
	err := tc.Handshake()
	w.raw.SetDeadline(time.Time{})
	if err != nil {
		return err
	}
	w.tr, w.tlsOn = tc, true
	w.br.Reset(tc)
	st := tc.ConnectionState()
	w.conn.setTLS(&st)
	return nil
}

// refuse answers a command itself (counted as an error of the client).
func (w *wire) refuse(label, reason string, e *Error) error {
	w.conn.Logger().Info("refused", zap.String("stage", "command"), zap.String("reason", reason))
	w.srv.metrics.refused(w.srv.name, "command", "", label)
	w.conn.Emit(Event{Kind: EventProtocolError, Detail: reason})
	w.inflight = ""
	return w.finalReply([]byte(formatReply(e)), e.Code, true)
}

// refuseAndClose answers and ends the connection.
func (w *wire) refuseAndClose(label, reason string, e *Error) error {
	if err := w.refuse(label, reason, e); err != nil {
		return err
	}
	w.closeAfterReply()
	return errWireClosed
}

// Write takes go-smtp's replies, a line at a time.
func (w *wire) Write(b []byte) (int, error) {
	w.replyBuf = append(w.replyBuf, b...)
	rest := w.replyBuf
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		if err := w.goSMTPLine(rest[:i+1]); err != nil {
			w.replyBuf = w.replyBuf[:0]
			return 0, err
		}
		rest = rest[i+1:]
	}
	// A partial line moves to the front; the buffer is kept for the next.
	w.replyBuf = append(w.replyBuf[:0], rest...)
	return len(b), nil
}

// goSMTPLine handles one reply line from go-smtp.
func (w *wire) goSMTPLine(line []byte) error {
	if w.resume != resumeNone {
		w.resumeReply(line)
		return nil
	}
	if len(line) < 4 {
		return w.send(line)
	}
	code, _ := strconv.Atoi(string(line[:3]))
	if line[3] == '-' { // not the last line of its reply: sent with it
		w.pending = append(w.pending, line...)
		w.ehloLines++
		if w.inflight == "EHLO" && w.ehloLines == 1 {
			switch {
			case w.offerTLS && !w.tlsOn:
				w.pending = append(w.pending, "250-STARTTLS\r\n"...)
			case w.tlsOn: // go-smtp cannot see our TLS
				w.pending = append(w.pending, "250-REQUIRETLS\r\n"...)
			}
		}
		return nil
	}
	counted := true
	switch w.sessionReply.Swap(replyNone) {
	case replyUncounted:
		counted = false
	case replyNone: // go-smtp's own reply
		if fixed, ok := goSMTPReplies[string(line)]; ok {
			line = []byte(fixed)
		}
		if code == 421 && w.ended.Load() { // its "connection error": the input was ended on purpose
			line = []byte(formatReply(replyShuttingDown))
		}
		if code >= 400 && !w.closing.Load() {
			w.conn.Logger().Debug("protocol error", zap.ByteString("reply", bytes.TrimRight(line, "\r\n")))
			w.conn.Emit(Event{Kind: EventProtocolError, Detail: "bad command (" + string(line[:3]) + ")"})
		}
	}
	return w.finalReply(line, code, counted)
}

// finalReply writes the last line of a reply: it counts an error, turns
// the one over max_errors into a 421, follows the protocol state and
// closes after a 421 or 221.
func (w *wire) finalReply(line []byte, code int, counted bool) error {
	if code >= 400 && code != 421 && counted {
		if n := w.conn.countError(); n >= w.lim.MaxErrors {
			w.conn.Logger().Info("closing: too many errors", zap.Int("errors", n))
			w.conn.Emit(Event{Kind: EventProtocolError, Detail: "too many errors"})
			line, code = []byte(formatReply(replyTooManyErrors)), 421
		}
	}
	w.follow(code)
	if code == 421 || code == 221 {
		w.closeAfterReply()
		w.quit = code == 221
		w.conn.releaseSlot()
	}
	return w.send(line)
}

// follow keeps the wire's view of the protocol state in step with the
// reply to the command in flight.
func (w *wire) follow(code int) {
	verb := w.inflight
	w.inflight = ""
	switch verb {
	case "HELO", "EHLO":
		if code == 250 {
			w.greeted = greetHELO
			if verb == "EHLO" {
				w.greeted = greetEHLO
			}
			w.resetTransaction()
		}
	case "MAIL":
		w.inMail = code == 250
	case "DATA":
		if code == 354 {
			w.mode, w.scan = modeData, bodyScan{dots: true}
			w.inflight = "DATA-END"
		}
	case "DATA-END":
		w.resetTransaction()
	case "BDAT":
		switch {
		case code == 250 && !w.lastChunk:
			w.bdat = true
		default: // the last chunk's reply, or an error (go-smtp resets)
			w.resetTransaction()
		}
		// go-smtp may answer before it reads the chunk: the mode changes
		// back only when the chunk is all read (readChunk).
	case "RSET":
		w.resetTransaction()
	case "AUTH":
		if code == 334 {
			w.authReply = true
			w.inflight = "AUTH"
		}
	}
}

func (w *wire) resetTransaction() {
	w.inMail, w.bdat = false, false
}

// send writes to the client within the write timeout, after the lines of
// the reply held back so far: a reply goes out in one write.
func (w *wire) send(b []byte) error {
	if len(w.pending) > 0 {
		w.pending = append(w.pending, b...)
		b = w.pending
		w.pending = w.pending[:0]
	}
	w.tr.SetWriteDeadline(time.Now().Add(time.Duration(w.lim.WriteTimeout)))
	_, err := w.tr.Write(b)
	return err
}

// readBody hands go-smtp DATA bytes up to and including the CRLF.CRLF
// that ends them, masking bare CR and LF (see bodyScan).
func (w *wire) readBody(b []byte) (int, error) {
	for {
		w.setReadDeadline()
		if _, err := w.br.Peek(1); err != nil {
			return 0, unexpectedEOF(err)
		}
		win, _ := w.br.Peek(w.br.Buffered())
		n, used, done := w.scan.mask(b, win, w.lim.MaxLineLength)
		w.br.Discard(used)
		if done {
			w.mode = modeCommand
		}
		if n > 0 || done {
			return n, nil
		}
	}
}

// readChunk hands go-smtp the bytes of a BDAT chunk, no more; a chunk
// cut short is an error, never a short message.
func (w *wire) readChunk(b []byte) (int, error) {
	w.setReadDeadline()
	k, err := w.br.Read(b[:min(int64(len(b)), w.chunkLeft)])
	w.scan.check(b[:k], w.lim.MaxLineLength)
	w.chunkLeft -= int64(k)
	if w.chunkLeft == 0 {
		w.mode = modeCommand
		if w.lastChunk {
			w.scan.finish()
		}
		return k, nil
	}
	if err != nil {
		return k, unexpectedEOF(err)
	}
	return k, nil
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// body reports what the wire saw of the last message body.
func (w *wire) body() bodyResult { return w.scan.result() }

// closeAfterReply makes the connection end once the pending reply is out.
func (w *wire) closeAfterReply() {
	w.linger = true
	w.closing.Store(true)
}

// Close ends the connection. After a reply that closes it, the write side
// is shut first and the input drained for a moment, so that the client
// reads that reply rather than a reset caused by its unread pipelining.
// A parking session is not closed: go-smtp only lets go of it.
func (w *wire) Close() error {
	if w.parking.CompareAndSwap(true, false) {
		w.park() // go-smtp is done with it; the session is not
		return nil
	}
	w.closeOnce.Do(func() {
		w.closing.Store(true)
		if w.linger && w.quit && !w.tlsOn && w.br != nil && w.br.Buffered() == 0 && !inputPending(w.raw) {
			// After QUIT with nothing unread a close cannot reset the
			// 221: no need to linger (the usual end of a session).
			w.raw.Close()
		} else if w.linger && lingering.TryAcquire(1) {
			go func() {
				defer lingering.Release(1)
				w.drainAndClose()
			}()
		} else {
			w.raw.Close()
		}
		if w.conn != nil {
			w.conn.finish()
		}
	})
	return nil
}

func (w *wire) drainAndClose() {
	if tc, ok := w.tr.(*tls.Conn); ok {
		tc.SetWriteDeadline(time.Now().Add(time.Second))
		tc.CloseWrite()
	}
	if cw, ok := w.raw.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	w.raw.SetReadDeadline(time.Now().Add(lingerTime))
	io.CopyN(io.Discard, w.raw, lingerBytes)
	w.raw.Close()
}

// Lingering closes are bounded: past the limit a connection is closed at
// once.
var lingering = semaphore.NewWeighted(1024)

const (
	lingerTime  = 2 * time.Second
	lingerBytes = 64 << 10
)

func (w *wire) LocalAddr() net.Addr  { return w.raw.LocalAddr() }
func (w *wire) RemoteAddr() net.Addr { return w.raw.RemoteAddr() }

// The deadlines are the wire's own business: go-smtp's are ignored.
func (w *wire) SetDeadline(time.Time) error      { return nil }
func (w *wire) SetReadDeadline(time.Time) error  { return nil }
func (w *wire) SetWriteDeadline(time.Time) error { return nil }

var _ net.Conn = (*wire)(nil)
