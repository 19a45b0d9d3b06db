package queue

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"
)

// dsnRcpt is one recipient in a delivery status notification.
type dsnRcpt struct {
	Address     string
	Action      string // failed or delayed
	Status      string // x.y.z
	Diagnostic  string // the remote reply or the local error
	RemoteMTA   string
	LastAttempt time.Time
	Expired     bool
}

// dsnInput is what a notification is built from.
type dsnInput struct {
	Hostname   string
	QueueID    string
	Sender     string // the original reverse path (the DSN's recipient)
	Arrival    time.Time
	RetryUntil time.Time // for delay warnings
	Header     []byte    // the original header block; nil leaves it out
	MessageID  string    // the original Message-ID (checked), or ""
	Rcpts      []dsnRcpt
	Delayed    bool
	UTF8       bool // the original came with SMTPUTF8: so does the notification
}

// buildDSN makes an RFC 3464 multipart/report: a human-readable part, the
// message/delivery-status part, and the original header (text/rfc822-headers)
// unless in.Header is nil (a sender that is not trusted, see
// settings.trustedClient).
func buildDSN(in *dsnInput, now time.Time) []byte {
	var rb [12]byte
	rand.Read(rb[:])
	boundary := "=_report_" + hex.EncodeToString(rb[:])
	msgID := hex.EncodeToString(rb[:8]) + "." + in.QueueID + "@" + in.Hostname

	var b bytes.Buffer
	subject := "Undelivered Mail Returned to Sender"
	if in.Delayed {
		subject = "Delayed Mail (still being retried)"
	}
	fmt.Fprintf(&b, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", in.Hostname)
	fmt.Fprintf(&b, "To: <%s>\r\n", in.Sender)
	fmt.Fprintf(&b, "Subject: %s\r\n", subject)
	fmt.Fprintf(&b, "Date: %s\r\n", now.Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <%s>\r\n", msgID)
	b.WriteString("Auto-Submitted: auto-replied\r\n")
	b.WriteString("MIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"%s\"\r\n", boundary)
	b.WriteString("\r\n")
	b.WriteString("This is a MIME-encapsulated message.\r\n\r\n")

	// Part 1: for humans.
	fmt.Fprintf(&b, "--%s\r\n", boundary)
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\n")
	b.WriteString("Content-Description: Notification\r\n\r\n")
	fmt.Fprintf(&b, "This is the mail system at host %s.\r\n\r\n", in.Hostname)
	if in.Delayed {
		b.WriteString("Your message could not be delivered yet to the recipients below.\r\n")
		fmt.Fprintf(&b, "It is still being retried, until %s. You do not need\r\n", in.RetryUntil.UTC().Format(time.RFC1123Z))
		b.WriteString("to send it again.\r\n\r\n")
	} else {
		b.WriteString("I'm sorry to have to inform you that your message could not\r\n")
		b.WriteString("be delivered to the recipients below. It has not been delivered\r\n")
		b.WriteString("to them and will not be retried.\r\n\r\n")
	}
	for _, r := range in.Rcpts {
		fmt.Fprintf(&b, "<%s>: %s\r\n", r.Address, oneLine(r.Diagnostic, 900))
		if r.Expired {
			b.WriteString("    (gave up: the message was too long in the queue)\r\n")
		}
	}
	b.WriteString("\r\n")

	// Part 2: for machines (RFC 3464 2.1-2.3).
	fmt.Fprintf(&b, "--%s\r\n", boundary)
	b.WriteString("Content-Type: message/delivery-status\r\n")
	b.WriteString("Content-Description: Delivery report\r\n\r\n")
	fmt.Fprintf(&b, "Reporting-MTA: dns; %s\r\n", in.Hostname)
	fmt.Fprintf(&b, "X-Caddy-SMTP-Queue-ID: %s\r\n", in.QueueID)
	if in.MessageID != "" {
		fmt.Fprintf(&b, "X-Original-Message-ID: %s\r\n", in.MessageID)
	}
	fmt.Fprintf(&b, "Arrival-Date: %s\r\n", in.Arrival.Format(time.RFC1123Z))
	for _, r := range in.Rcpts {
		b.WriteString("\r\n")
		fmt.Fprintf(&b, "Final-Recipient: rfc822; %s\r\n", r.Address)
		fmt.Fprintf(&b, "Action: %s\r\n", r.Action)
		fmt.Fprintf(&b, "Status: %s\r\n", r.Status)
		if r.RemoteMTA != "" {
			fmt.Fprintf(&b, "Remote-MTA: dns; %s\r\n", r.RemoteMTA)
		}
		if r.Diagnostic != "" {
			kind := "smtp"
			if r.RemoteMTA == "" {
				kind = "X-caddy-smtp"
			}
			fmt.Fprintf(&b, "Diagnostic-Code: %s; %s\r\n", kind, oneLine(r.Diagnostic, 900))
		}
		if !r.LastAttempt.IsZero() {
			fmt.Fprintf(&b, "Last-Attempt-Date: %s\r\n", r.LastAttempt.Format(time.RFC1123Z))
		}
		if in.Delayed && !in.RetryUntil.IsZero() {
			fmt.Fprintf(&b, "Will-Retry-Until: %s\r\n", in.RetryUntil.Format(time.RFC1123Z))
		}
	}
	b.WriteString("\r\n")

	// Part 3: the original header.
	if in.Header != nil {
		fmt.Fprintf(&b, "--%s\r\n", boundary)
		b.WriteString("Content-Type: text/rfc822-headers\r\n")
		if has8bit(in.Header) {
			b.WriteString("Content-Transfer-Encoding: 8bit\r\n")
		}
		b.WriteString("Content-Description: Undelivered message headers\r\n\r\n")
		b.Write(bytes.TrimRight(in.Header, "\r\n"))
		b.WriteString("\r\n\r\n")
	}
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	return b.Bytes()
}

// oneLine keeps text to one line of at most max bytes.
func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)), " ")
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

func has8bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// maxDSNHeader bounds the original header quoted in a DSN.
const maxDSNHeader = 64 << 10

// quotedOriginal reads what a DSN quotes of the original message: its
// header block (complete lines, at most maxDSNHeader bytes), only for a
// trusted sender, and its Message-ID. A bounce about mail from a stranger
// goes to an address the stranger chose: quoting the header would let
// spam ride on our bounces (backscatter), so it carries only the
// recipients, the replies and the Message-ID.
func quotedOriginal(r io.Reader, trusted bool) (header []byte, messageID string) {
	hdr, fields := readHeader(r)
	for _, f := range fields {
		if strings.EqualFold(f.name, "Message-ID") {
			messageID = checkedMessageID(f.value)
			break
		}
	}
	if !trusted {
		return nil, messageID
	}
	if hdr == nil {
		hdr = []byte{} // an empty header part, not none
	}
	if len(hdr) > maxDSNHeader {
		hdr = hdr[:maxDSNHeader]
		if i := bytes.LastIndex(hdr, []byte("\r\n")); i > 0 {
			hdr = hdr[:i+2]
		}
	}
	return hdr, messageID
}

// checkedMessageID returns "<left@right>" when v is one, in printable
// ASCII and short, else "".
func checkedMessageID(v string) string {
	v = strings.TrimSpace(v)
	if len(v) < 5 || len(v) > 250 || v[0] != '<' || v[len(v)-1] != '>' {
		return ""
	}
	inner := v[1 : len(v)-1]
	for i := 0; i < len(inner); i++ {
		if c := inner[i]; c <= ' ' || c >= 0x7f || c == '<' || c == '>' {
			return ""
		}
	}
	if left, right, ok := strings.Cut(inner, "@"); !ok || left == "" || right == "" || strings.Contains(right, "@") {
		return ""
	}
	return v
}
