package smtpapp

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
)

// Error is an SMTP reply that a hook returns to refuse a command. A 4xx code
// is a temporary failure, a 5xx code a permanent one; a 421 also closes the
// connection after the reply is sent.
type Error = smtp.SMTPError

// Errorf builds an *Error with an enhanced status code (RFC 3463); the
// text is formatted as with fmt.Sprintf.
func Errorf(code int, enhanced [3]int, format string, args ...any) *Error {
	msg := format
	if len(args) > 0 {
		msg = fmt.Sprintf(format, args...)
	}
	return &Error{Code: code, EnhancedCode: smtp.EnhancedCode(enhanced), Message: msg}
}

// Refusal is a hook's refusal with a short, low-cardinality reason label
// for the refusals metric (e.g. "connections", "listed").
type Refusal struct {
	Reply *Error
	Label string
}

// Refuse builds a *Refusal.
func Refuse(code int, enhanced [3]int, label, msg string) *Refusal {
	return &Refusal{Reply: Errorf(code, enhanced, "%s", msg), Label: label}
}

func (r *Refusal) Error() string { return r.Reply.Error() }

func (r *Refusal) Unwrap() error { return r.Reply }

// The stage hooks. A handler module implements any of them; the server calls
// them in config order and stops at the first error, which becomes the reply.
// Hooks get the connection's context: it is cancelled when the client goes
// away or the session limit is reached, so waiting hooks must honour it.

// ConnectHook runs when a client connects, before the greeting. A refusal
// is sent instead of the greeting and the connection is closed.
type ConnectHook interface {
	Connect(ctx context.Context, c *Conn) error
}

// HeloHook runs on the first HELO/EHLO of a session.
type HeloHook interface {
	Helo(ctx context.Context, c *Conn, name string) error
}

// AuthHook runs before each AUTH attempt is checked (to throttle or refuse
// brute force); failed attempts are reported as EventAuthFailed.
type AuthHook interface {
	Auth(ctx context.Context, c *Conn, username string) error
}

// MailHook runs on MAIL FROM, after the address was parsed ("" is the null
// sender).
type MailHook interface {
	Mail(ctx context.Context, c *Conn, from string) error
}

// RcptHook runs on RCPT TO after routing accepted the recipient.
type RcptHook interface {
	Rcpt(ctx context.Context, c *Conn, rcpt Recipient) error
}

// ErrDiscard, returned by a DataHook, accepts the message (250) and drops
// it unseen: nothing is delivered (a milter's or filter's discard action,
// as Postfix's DISCARD). The message line is logged as "discarded".
var ErrDiscard = errors.New("message discarded by a content filter")

// DataHook runs after the whole body is spooled and before it is delivered.
// It may add header fields to the message and points to the spam score.
type DataHook interface {
	Data(ctx context.Context, c *Conn, msg *Message) error
}

// CloseHook runs once when the connection ends.
type CloseHook interface {
	Close(c *Conn)
}

// EventHook is told about abuse-relevant events (failed AUTH, unknown
// recipients, relay attempts, protocol errors, refusals), for counting.
// Event runs synchronously on the session's goroutine, before the reply
// that the event causes is written: a hook may wait there (a tarpit),
// honouring c.Context().
type EventHook interface {
	Event(c *Conn, ev Event)
}

// EventKind names what happened in an Event.
type EventKind string

// Event kinds.
const (
	EventAuthFailed       EventKind = "auth_failed"
	EventUnknownRecipient EventKind = "unknown_recipient"
	EventRelayDenied      EventKind = "relay_denied"
	EventProtocolError    EventKind = "protocol_error"
	EventRefused          EventKind = "refused" // a hook refused a command
)

// Event is an abuse-relevant happening in a session.
type Event struct {
	Kind EventKind
	// Module is the module ID of the hook that caused it, if any.
	Module string
	// Detail is a short human-readable reason.
	Detail string
}

// DeliveryTarget stores or forwards an accepted message. Deliver returns
// only when the message is durably stored (synced to disk) or handed on;
// an error makes the server answer 451 and keep nothing.
type DeliveryTarget interface {
	Deliver(ctx context.Context, env *Envelope, msg *Message) error
}

// PartialFailure is what a DeliveryTarget returns when it stored the
// message for some recipients and refused others for good (5xx, e.g. a
// full mailbox behind LMTP). The server then tells the sender by a
// bounce (through a Bouncer) and answers 250; without a Bouncer it
// answers 451 and the client retries.
type PartialFailure struct {
	Failed []FailedRecipient
}

// FailedRecipient is a recipient refused for good, with the reply.
type FailedRecipient struct {
	Recipient
	Reply *Error
}

func (p *PartialFailure) Error() string {
	parts := make([]string, len(p.Failed))
	for i, f := range p.Failed {
		parts[i] = f.Address + ": " + f.Reply.Error()
	}
	return "delivery failed for some recipients: " + strings.Join(parts, "; ")
}

// Bouncer is an optional DeliveryTarget extension (the queue): Bounce
// sends env.From a delivery status notification (RFC 3464) about the
// failed recipients of msg, durably queued when it returns.
type Bouncer interface {
	Bounce(ctx context.Context, env *Envelope, msg *Message, failed []FailedRecipient) error
}

// Stager is an optional DeliveryTarget extension that splits Deliver in
// two: Stage does the durable work (written and synced, not yet visible),
// commit only makes the message visible (cheap, hardly ever fails), abort
// drops it. For a message with local and remote recipients the server
// stages the local copies, hands the remote recipients to the outbound
// target, then commits: if the outbound target fails, no local copy is
// left to be delivered twice when the client retries.
type Stager interface {
	Stage(ctx context.Context, env *Envelope, msg *Message) (commit func() error, abort func(), err error)
}

// Starter is an optional interface of delivery targets (and accounts
// providers): Start is called when the app starts, after its listeners are
// bound, for work that must not run in a config that is only validated
// (background workers, locks). Stopping is Cleanup's job.
type Starter interface {
	Start() error
}

// Accounts is the accounts provider: it checks logins and tells which local
// account an address belongs to.
type Accounts interface {
	// Authenticate checks a login and returns the account's canonical
	// address, or ErrAuthFailed.
	Authenticate(ctx context.Context, username, password string) (string, error)
	// Lookup returns the canonical address of the account that receives mail
	// for address (itself, or an alias), or ErrNoSuchUser. The address has a
	// lower-cased domain; the subaddress (+tag) is already removed.
	Lookup(ctx context.Context, address string) (string, error)
}

// SenderAuthorizer is an optional Accounts extension: extra sender addresses
// an account may use in MAIL FROM besides those that Lookup maps to it.
type SenderAuthorizer interface {
	MaySendAs(ctx context.Context, account, address string) bool
}

// Forwarder is an optional Accounts extension: addresses that forward.
// Forwards returns the targets of a local address that forwards (local
// or remote addresses, lower-cased domains), nil for one that does not
// (a mailbox, an alias or an unknown address). A remote target gets the
// message through the outbound queue with an SRS sender; a local one is
// routed as if given with RCPT TO (it may forward again).
type Forwarder interface {
	Forwards(ctx context.Context, address string) ([]string, error)
}
