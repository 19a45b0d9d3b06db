package smtpapp

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"
)

// Recipient is an accepted recipient.
type Recipient struct {
	// Address is the recipient as given (domain lower-cased).
	Address string `json:"address"`
	// Mailbox is the local account that receives it, or "" for a remote
	// recipient (relayed through the outbound target).
	Mailbox string `json:"mailbox,omitempty"`
	// ForwardedFor is the local address whose forwarding made this
	// recipient (an alias that forwards, or an SRS address a bounce was
	// sent to), "" for a recipient given as it is. A remote recipient
	// with it goes to the outbound target whoever the client is (the
	// domain owner chose to forward, it is no relay), in an envelope of
	// its own whose sender is rewritten with SRS.
	ForwardedFor string `json:"forwarded_for,omitempty"`
}

// Local reports whether the recipient is a local mailbox.
func (r Recipient) Local() bool { return r.Mailbox != "" }

// Envelope is what the delivery targets get besides the message.
type Envelope struct {
	// ID is the message's ID (in logs, Received, file names).
	ID string `json:"id"`
	// From is the reverse path; "" is the null sender.
	From string `json:"from"`
	// Recipients are the ones this target must deliver to.
	Recipients []Recipient `json:"recipients"`
	// ClientIP is the address of the client that sent the message.
	ClientIP netip.Addr `json:"client_ip"`
	// Helo is the client's HELO/EHLO name.
	Helo string `json:"helo,omitempty"`
	// Account is the authenticated sender account, if any.
	Account string `json:"account,omitempty"`
	// Received is when the message was accepted.
	Received time.Time `json:"received"`
	// Junk asks the mailbox to file the message as spam.
	Junk bool `json:"junk,omitempty"`
	// RequireTLS: MAIL FROM carried REQUIRETLS (RFC 8689): the message may
	// only be relayed over validated TLS (DANE or MTA-STS) to a server
	// that offers REQUIRETLS.
	RequireTLS bool `json:"require_tls,omitempty"`
	// UTF8: MAIL FROM carried SMTPUTF8 (RFC 6531): the addresses (local
	// parts in UTF-8; domains are always in A-label form) and the header
	// section may hold UTF-8. A relay passes SMTPUTF8 on, and must not
	// hand such a message to a server without SMTPUTF8 unless nothing in
	// it needs the extension (the queue's rule).
	UTF8 bool `json:"utf8,omitempty"`
}

// Message is an accepted message: the header fields added by the server,
// then the body exactly as received (CRLF line ends, dots unstuffed). Small
// bodies stay in memory; larger ones are spooled to a file.
type Message struct {
	header      []byte // newest field first
	authResults []string
	mem         []byte
	file        *os.File
	size        int64
	// The original header section can be replaced (to drop forged
	// fields): head stands for the first skip bytes of the body.
	head []byte
	skip int64
	// budget holds the reservation for mem.
	budget   *memoryBudget
	reserved int64
}

// AddAuthResult adds one result (RFC 8601 resinfo, e.g. "spf=pass
// smtp.mailfrom=example.org") to the message's Authentication-Results
// field, which the server adds once, after the Data hooks.
func (m *Message) AddAuthResult(result string) {
	m.authResults = append(m.authResults, sanitizeHeaderValue(result))
}

// AddHeader adds a header field on top of the message (trace fields are
// prepended, newest first). Value may be folded with CRLF + white space.
func (m *Message) AddHeader(name, value string) {
	var b bytes.Buffer
	b.Grow(len(name) + len(value) + 4 + len(m.header))
	b.WriteString(name)
	b.WriteString(": ")
	b.WriteString(sanitizeHeaderValue(value))
	b.WriteString("\r\n")
	b.Write(m.header)
	m.header = b.Bytes()
}

// sanitizeHeaderValue keeps folding (CRLF + WSP) and drops any other CR or
// LF, so a value from the network can never start a new header field.
func sanitizeHeaderValue(v string) string {
	if !strings.ContainsAny(v, "\r\n") {
		return v
	}
	var b strings.Builder
	b.Grow(len(v))
	for i := 0; i < len(v); i++ {
		ch := v[i]
		if ch == '\r' && i+2 < len(v) && v[i+1] == '\n' && (v[i+2] == ' ' || v[i+2] == '\t') {
			b.WriteString("\r\n")
			i++
			continue
		}
		if ch == '\r' || ch == '\n' {
			b.WriteByte(' ')
			continue
		}
		b.WriteByte(ch)
	}
	return b.String()
}

// Header returns the added header fields.
func (m *Message) Header() []byte { return m.header }

// Size is the body's size in bytes.
func (m *Message) Size() int64 { return m.size - m.skip + int64(len(m.head)) }

// Body returns a new reader of the body as received (less any forged
// header fields the server removed).
func (m *Message) Body() io.Reader {
	var rest io.Reader
	if m.file != nil {
		rest = io.NewSectionReader(m.file, m.skip, m.size-m.skip)
	} else {
		rest = bytes.NewReader(m.mem[m.skip:])
	}
	if m.head == nil {
		return rest
	}
	return io.MultiReader(bytes.NewReader(m.head), rest)
}

// Reader returns a new reader of the whole message: added fields, then body.
func (m *Message) Reader() io.Reader {
	return io.MultiReader(bytes.NewReader(m.header), m.Body())
}

// WriteTo writes the whole message to w.
func (m *Message) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(m.header)
	if err != nil {
		return int64(n), err
	}
	var k int64
	if m.file != nil || m.head != nil || m.skip > 0 {
		k, err = io.Copy(w, m.Body())
	} else {
		var kk int
		kk, err = w.Write(m.mem)
		k = int64(kk)
	}
	return int64(n) + k, err
}

// maxHeaderSection bounds the header section the server reads; a message
// whose header section is longer is refused. Postfix's header_size_limit
// is 100 KiB; real mail with long ARC and DKIM chains stays far below.
const maxHeaderSection = 256 << 10

// headerScanSize is the memory reading the header section takes beyond
// what the message already holds.
func (m *Message) headerScanSize() int64 {
	if m.file == nil {
		return 0
	}
	return min(m.size, maxHeaderSection)
}

// errHeaderTooLarge reports a header section over maxHeaderSection.
var errHeaderTooLarge = errors.New("header section too large")

// removeHeaderFields calls drop for each field of the original header
// section (name as written, without trailing white space; value as
// written, still folded) and removes the fields for which it returns true.
// The header section ends at the first empty line, or with the message.
func (m *Message) removeHeaderFields(drop func(name, value []byte) bool) error {
	buf := m.mem
	if m.file != nil {
		buf = make([]byte, min(m.size, maxHeaderSection))
		if _, err := io.ReadFull(io.NewSectionReader(m.file, 0, m.size), buf); err != nil {
			return err
		}
	}
	fields, pos, complete := splitFields(buf)
	if !complete && int64(len(buf)) < m.size {
		return errHeaderTooLarge
	}
	var dropped []span
	for _, f := range fields {
		field := buf[f.from:f.to]
		if colon := bytes.IndexByte(field, ':'); colon > 0 {
			if drop(bytes.TrimRight(field[:colon], " \t"), field[colon+1:]) {
				dropped = append(dropped, f)
			}
		}
	}
	if len(dropped) == 0 {
		return nil
	}
	var head []byte
	prev := 0
	for _, d := range dropped {
		head = append(head, buf[prev:d.from]...)
		prev = d.to
	}
	// Never nil once fields were dropped: head then stands for the
	// original header section (Body and WriteTo both rely on it).
	m.head = append(make([]byte, 0, len(head)+pos-prev), head...)
	m.head = append(m.head, buf[prev:pos]...)
	m.skip = int64(pos)
	return nil
}

// span is a field's place in a header section: buf[from:to], its CRLF
// included.
type span struct{ from, to int }

// splitFields splits a header section into its fields: a field runs to a
// CRLF not followed by white space. It stops at the empty line that ends
// the section (complete) or at the end of buf; end is where it stopped.
func splitFields(buf []byte) (fields []span, end int, complete bool) {
	pos := 0
	for pos < len(buf) {
		if bytes.HasPrefix(buf[pos:], []byte("\r\n")) {
			return fields, pos, true
		}
		end := pos
		for {
			i := bytes.Index(buf[end:], []byte("\r\n"))
			if i < 0 {
				end = len(buf)
				break
			}
			end += i + 2
			if end >= len(buf) || (buf[end] != ' ' && buf[end] != '\t') {
				break
			}
		}
		fields = append(fields, span{pos, end})
		pos = end
	}
	return fields, pos, false
}

// Discard frees the message's resources.
func (m *Message) Discard() {
	if m.file != nil {
		name := m.file.Name()
		m.file.Close()
		os.Remove(name)
		m.file = nil
	}
	m.mem = nil
	if m.budget != nil {
		m.budget.release(m.reserved)
		m.reserved = 0
	}
}

// NewMessage makes a message from a body held in memory (for tools and
// tests; the server builds messages with readMessage).
func NewMessage(body []byte) *Message { return &Message{mem: body, size: int64(len(body))} }

// errBareLineEnd reports a CR or LF that is not part of a CRLF pair.
var errBareLineEnd = errors.New("bare CR or LF in message")

// memPerMessage is the most of one body kept in memory; bodies beyond it,
// or beyond what the app's budget has left, go to a spool file.
const memPerMessage = 128 << 10

// readBufferSize is the read buffer of a body on its way to the spool.
const readBufferSize = 8 << 10

// readMessage reads a DATA body, refusing bare CR or LF (the SMTP smuggling
// vector) after reading the rest. A body stays in memory while it fits
// memPerMessage and the budget; otherwise it goes to a file in spoolDir.
func readMessage(r io.Reader, budget *memoryBudget, spoolDir string) (*Message, error) {
	m := &Message{budget: budget}
	buf := make([]byte, readBufferSize)
	var prevCR, bad bool
	for {
		n, err := r.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if !bad {
				bad = !checkLineEnds(chunk, &prevCR)
			}
			if !bad {
				if werr := m.write(chunk, spoolDir); werr != nil {
					m.Discard()
					return nil, werr
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			m.Discard()
			return nil, err
		}
	}
	if bad || prevCR {
		m.Discard()
		return nil, errBareLineEnd
	}
	return m, nil
}

// checkLineEnds reports whether every CR and LF in b is part of a CRLF pair,
// carrying a trailing CR to the next chunk through prevCR.
func checkLineEnds(b []byte, prevCR *bool) bool {
	for len(b) > 0 {
		if *prevCR {
			if b[0] != '\n' {
				return false
			}
			*prevCR = false
			b = b[1:]
			continue
		}
		i := bytes.IndexAny(b, "\r\n")
		if i < 0 {
			return true
		}
		if b[i] == '\n' {
			return false
		}
		*prevCR = true
		b = b[i+1:]
	}
	return true
}

func (m *Message) write(p []byte, spoolDir string) error {
	m.size += int64(len(p))
	if m.file == nil && len(m.mem)+len(p) <= memPerMessage && m.budget != nil && m.budget.tryReserve(int64(len(p))) {
		m.reserved += int64(len(p))
		m.mem = append(m.mem, p...)
		return nil
	}
	if m.file == nil {
		f, err := os.CreateTemp(spoolDir, "smtp-spool-*")
		if err != nil {
			return err
		}
		m.file = f
		if _, err := f.Write(m.mem); err != nil {
			return err
		}
		m.mem = nil
		m.budget.release(m.reserved)
		m.reserved = 0
	}
	_, err := m.file.Write(p)
	return err
}
