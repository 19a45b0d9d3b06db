package queue

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
)

// The outbound SMTP client. go-smtp's client cannot send our EHLO name
// before STARTTLS (its StartTLS is not exported and NewClientStartTLS says
// EHLO localhost), and it hides the replies of pipelined commands, so the
// queue speaks SMTP itself: greeting, EHLO/HELO, STARTTLS, AUTH, and MAIL,
// RCPT, DATA pipelined (RFC 2920) when the server offers it, with every
// reply kept per recipient.

// reply is an SMTP reply.
type reply struct {
	Code     int
	Enhanced string // "5.1.1", or "" when the server sent none
	Text     string // without the codes; lines joined by "; "
	lines    []string
}

func (r *reply) Error() string {
	if r.Enhanced != "" {
		return strconv.Itoa(r.Code) + " " + r.Enhanced + " " + r.Text
	}
	return strconv.Itoa(r.Code) + " " + r.Text
}

func (r *reply) ok() bool   { return r.Code >= 200 && r.Code < 400 }
func (r *reply) temp() bool { return r.Code >= 400 && r.Code < 500 }

// Limits on what a remote server can make the client read for one reply,
// so that a hostile MX cannot grow the queue's memory: a line longer than
// maxReplyLine, more than maxReplyLines lines or maxReplyBytes bytes end
// the session (a temporary failure; the next host is tried). RFC 5321
// allows 512 bytes per line; real EHLO replies have about 20 lines.
const (
	maxReplyLine  = 4096
	maxReplyLines = 100
	maxReplyBytes = 64 << 10
)

// errReplyTooLong is a reply beyond the limits above.
type errReplyTooLong struct {
	what string
	read int64 // bytes read from the connection so far
}

func (e *errReplyTooLong) Error() string {
	return fmt.Sprintf("reply too long (%s; %d bytes read)", e.what, e.read)
}

type client struct {
	conn       net.Conn
	r          *bufio.Reader
	w          *textproto.Writer
	in         *countingReader
	ext        map[string]string
	timeout    time.Duration // per command
	tlsState   *tls.ConnectionState
	serverName string // from the greeting
	// needRset asks the next transaction to start with RSET: the
	// connection comes from the connection cache, and RSET both clears
	// any state and proves that the server is still there.
	needRset bool
}

func newClient(conn net.Conn, timeout time.Duration) *client {
	c := &client{timeout: timeout, in: &countingReader{}}
	c.setConn(conn)
	return c
}

func (c *client) setConn(conn net.Conn) {
	c.conn = conn
	c.in.r = conn
	c.r = bufio.NewReaderSize(c.in, maxReplyLine)
	c.w = textproto.NewWriter(bufio.NewWriter(conn))
}

func (c *client) close() error { return c.conn.Close() }

// bytesRead is how much the client read from the server (decrypted,
// after STARTTLS).
func (c *client) bytesRead() int64 { return c.in.n }

// read reads one reply within the command timeout.
func (c *client) read() (*reply, error) {
	c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	r, err := readReply(c.r)
	var tooLong *errReplyTooLong
	if errors.As(err, &tooLong) {
		tooLong.read = c.bytesRead()
	}
	return r, err
}

// readReply reads one reply (RFC 5321 4.2): lines "ddd-text" then a last
// "ddd text" (or "ddd"), within the limits above. A continuation line
// that does not start with the reply's code is kept as text, as
// net/textproto does. The lines are copied once each and joined once.
func readReply(br *bufio.Reader) (*reply, error) {
	var lines []string
	code, total := 0, 0
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			return nil, &errReplyTooLong{what: fmt.Sprintf("a line longer than %d bytes", maxReplyLine)}
		case err == io.EOF && len(line) > 0:
			return nil, io.ErrUnexpectedEOF
		case err != nil:
			return nil, err
		}
		if total += len(line); total > maxReplyBytes {
			return nil, &errReplyTooLong{what: fmt.Sprintf("more than %d bytes", maxReplyBytes)}
		}
		if len(lines) == maxReplyLines {
			return nil, &errReplyTooLong{what: fmt.Sprintf("more than %d lines", maxReplyLines)}
		}
		text := strings.TrimRight(string(line), "\r\n")
		lineCode, more, rest, ok := parseReplyLine(text)
		switch {
		case len(lines) == 0 && !ok:
			return nil, fmt.Errorf("malformed reply line %q", oneLine(text, 80))
		case len(lines) == 0:
			code = lineCode
		case !ok || lineCode != code:
			rest, more = text, true
		}
		lines = append(lines, rest)
		if !more {
			break
		}
	}
	if code < 200 || code > 599 {
		return nil, fmt.Errorf("bad reply code %d", code)
	}
	return newReply(code, lines), nil
}

// parseReplyLine splits "ddd-text", "ddd text" or "ddd"; more is true for
// "ddd-".
func parseReplyLine(line string) (code int, more bool, text string, ok bool) {
	if len(line) < 3 || len(line) > 3 && line[3] != ' ' && line[3] != '-' {
		return 0, false, "", false
	}
	for _, ch := range []byte(line[:3]) {
		if ch < '0' || ch > '9' {
			return 0, false, "", false
		}
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if len(line) == 3 {
		return code, false, "", true
	}
	return code, line[3] == '-', line[4:], true
}

// newReply takes the enhanced status code (RFC 2034) off each line; the
// first line's is the reply's.
func newReply(code int, lines []string) *reply {
	r := &reply{Code: code}
	for i, l := range lines {
		if enh, rest, ok := strings.Cut(l, " "); ok && isEnhanced(enh, code) {
			if i == 0 {
				r.Enhanced = enh
			}
			lines[i] = rest
		} else if isEnhanced(l, code) {
			if i == 0 {
				r.Enhanced = l
			}
			lines[i] = ""
		}
	}
	r.lines = lines
	r.Text = strings.Join(lines, "; ")
	return r
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// isEnhanced reports whether s is an RFC 3463 code matching the reply class.
func isEnhanced(s string, code int) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || int(parts[0][0]-'0') != code/100 {
		return false
	}
	for _, p := range parts[1:] {
		if p == "" || len(p) > 3 {
			return false
		}
		for _, ch := range p {
			if ch < '0' || ch > '9' {
				return false
			}
		}
	}
	return true
}

func (c *client) write(lines ...string) error {
	c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	for _, l := range lines {
		if strings.ContainsAny(l, "\r\n") {
			return fmt.Errorf("refusing to send a command with a line break")
		}
		if _, err := c.w.W.WriteString(l + "\r\n"); err != nil {
			return err
		}
	}
	return c.w.W.Flush()
}

func (c *client) cmd(line string) (*reply, error) {
	if err := c.write(line); err != nil {
		return nil, err
	}
	return c.read()
}

// greet reads the greeting; a non-220 greeting is returned as the error.
func (c *client) greet() error {
	r, err := c.read()
	if err != nil {
		return err
	}
	if r.Code != 220 {
		return r
	}
	c.serverName, _, _ = strings.Cut(r.Text, " ")
	return nil
}

// hello says EHLO, or HELO if the server refuses EHLO.
func (c *client) hello(name string) error {
	r, err := c.cmd("EHLO " + name)
	if err != nil {
		return err
	}
	c.ext = map[string]string{}
	if r.Code == 250 {
		for _, l := range r.lines[1:] {
			k, v, _ := strings.Cut(l, " ")
			c.ext[strings.ToUpper(k)] = v
		}
		return nil
	}
	if r.Code >= 500 {
		r, err = c.cmd("HELO " + name)
		if err != nil {
			return err
		}
		if r.Code == 250 {
			return nil
		}
	}
	return r
}

func (c *client) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// errTLSHandshake marks a failed handshake after the server said 220 to
// STARTTLS: the connection is unusable.
type errTLSHandshake struct{ err error }

func (e *errTLSHandshake) Error() string { return "TLS handshake: " + e.err.Error() }
func (e *errTLSHandshake) Unwrap() error { return e.err }

// startTLS upgrades the connection. A refusal of the command is returned as
// a *reply and leaves the plain session usable.
func (c *client) startTLS(ctx context.Context, cfg *tls.Config) error {
	r, err := c.cmd("STARTTLS")
	if err != nil {
		return err
	}
	if r.Code != 220 {
		return r
	}
	if c.r.Buffered() > 0 {
		// Plain text after the 220 would be taken as the first reply
		// inside TLS: a man in the middle could inject it (the STARTTLS
		// response injection of CVE-2011-0411's family).
		return &errTLSHandshake{errors.New("the server sent data after its 220 to STARTTLS")}
	}
	tc := tls.Client(c.conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return &errTLSHandshake{err}
	}
	st := tc.ConnectionState()
	c.tlsState = &st
	c.setConn(tc)
	return nil
}

// auth runs an AUTH exchange.
func (c *client) auth(a sasl.Client) error {
	mech, resp, err := a.Start()
	if err != nil {
		return err
	}
	line := "AUTH " + mech
	if resp != nil {
		if len(resp) == 0 {
			line += " ="
		} else {
			line += " " + base64.StdEncoding.EncodeToString(resp)
		}
	}
	r, err := c.cmd(line)
	for err == nil && r.Code == 334 {
		var challenge []byte
		challenge, err = base64.StdEncoding.DecodeString(r.Text)
		if err != nil {
			c.write("*")
			c.read()
			return fmt.Errorf("AUTH: bad challenge from server: %v", err)
		}
		resp, err = a.Next(challenge)
		if err != nil {
			c.write("*")
			c.read()
			return err
		}
		r, err = c.cmd(base64.StdEncoding.EncodeToString(resp))
	}
	if err != nil {
		return err
	}
	if r.Code != 235 {
		return r
	}
	return nil
}

// txResult is the outcome of one mail transaction.
type txResult struct {
	mail  *reply   // reply to MAIL
	rcpts []*reply // reply to each RCPT (nil if not sent)
	data  *reply   // reply to DATA (354) or its refusal
	final *reply   // reply after the message, if it was sent
	// sent is true once the end of data was written: a failure after that
	// may still have been delivered.
	sent bool
}

// closing reports whether the server said 421 (it closes the connection)
// to any command of the transaction.
func (t *txResult) closing() bool {
	for _, r := range append([]*reply{t.mail, t.data, t.final}, t.rcpts...) {
		if r != nil && r.Code == 421 {
			return true
		}
	}
	return false
}

// transaction sends one message to rcpts (with requireTLS, MAIL FROM
// carries REQUIRETLS, with smtputf8 SMTPUTF8: the caller checked the
// extensions). An error means the connection failed; what replies came
// are in the result.
func (c *client) transaction(from string, rcpts []string, size int64, requireTLS, smtputf8 bool, dataTimeout time.Duration, body func(io.Writer) error) (*txResult, error) {
	res := &txResult{rcpts: make([]*reply, len(rcpts))}
	mail := "MAIL FROM:<" + from + ">"
	if requireTLS {
		mail += " REQUIRETLS"
	}
	if smtputf8 {
		mail += " SMTPUTF8"
	}
	if c.has("SIZE") {
		mail += " SIZE=" + strconv.FormatInt(size, 10)
	}
	if c.has("8BITMIME") {
		mail += " BODY=8BITMIME"
	}
	pipelining := c.has("PIPELINING")
	rset := c.needRset
	c.needRset = false
	var err error
	if pipelining {
		lines := make([]string, 0, len(rcpts)+3)
		if rset {
			lines = append(lines, "RSET") // RFC 2920 3.1: may be pipelined
		}
		lines = append(lines, mail)
		for _, r := range rcpts {
			lines = append(lines, "RCPT TO:<"+r+">")
		}
		lines = append(lines, "DATA")
		if err := c.write(lines...); err != nil {
			return res, err
		}
		if rset {
			if err := c.readRset(); err != nil {
				return res, err
			}
		}
		if res.mail, err = c.read(); err != nil {
			return res, err
		}
		for i := range rcpts {
			if res.rcpts[i], err = c.read(); err != nil {
				return res, err
			}
		}
		if res.data, err = c.read(); err != nil {
			return res, err
		}
	} else {
		if rset {
			if err := c.write("RSET"); err != nil {
				return res, err
			}
			if err := c.readRset(); err != nil {
				return res, err
			}
		}
		if res.mail, err = c.cmd(mail); err != nil {
			return res, err
		}
		if !res.mail.ok() {
			return res, nil
		}
		for i, r := range rcpts {
			if res.rcpts[i], err = c.cmd("RCPT TO:<" + r + ">"); err != nil {
				return res, err
			}
		}
	}
	accepted := 0
	for _, r := range res.rcpts {
		if r != nil && r.ok() {
			accepted++
		}
	}
	if !pipelining && res.mail.ok() && accepted > 0 {
		if res.data, err = c.cmd("DATA"); err != nil {
			return res, err
		}
	}
	if res.data == nil || res.data.Code != 354 {
		// Nothing to send: leave the session clean for the next one.
		if _, err := c.cmd("RSET"); err != nil {
			return res, err
		}
		return res, nil
	}
	if !res.mail.ok() || accepted == 0 {
		// A pipelining server said 354 with no valid recipient (RFC 2920
		// 3.1): end the empty message and ignore its reply.
		if _, err := c.cmd("."); err != nil {
			return res, err
		}
		return res, nil
	}
	c.conn.SetWriteDeadline(time.Now().Add(dataTimeout))
	dw := c.w.DotWriter()
	if err := body(dw); err != nil {
		return res, err
	}
	if err := dw.Close(); err != nil {
		return res, err
	}
	res.sent = true
	c.conn.SetReadDeadline(time.Now().Add(dataTimeout))
	saved := c.timeout
	c.timeout = dataTimeout
	res.final, err = c.read()
	c.timeout = saved
	return res, err
}

// errStale is a cached connection that did not answer RSET with 250:
// nothing was sent on it, the message goes on a new connection.
type errStale struct{ err error }

func (e *errStale) Error() string { return "cached connection: RSET: " + e.err.Error() }
func (e *errStale) Unwrap() error { return e.err }

// readRset reads the reply to RSET.
func (c *client) readRset() error {
	r, err := c.read()
	if err == nil && r.Code != 250 {
		err = r
	}
	if err != nil {
		return &errStale{err}
	}
	return nil
}

// quit ends the session politely; errors do not matter any more.
func (c *client) quit() {
	c.timeout = 10 * time.Second
	c.cmd("QUIT")
	c.close()
}
