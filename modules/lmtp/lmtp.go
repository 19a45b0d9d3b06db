// Package lmtp is the smtp.delivery.lmtp module: it hands local mail to an
// LMTP server (RFC 2033), typically Dovecot, which stores it (and runs
// Sieve, quotas, full-text indexing).
package lmtp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(LMTP{})
}

// LMTP delivers local mail to an LMTP server, which answers for each
// recipient. Recipients refused for good (a full mailbox, an unknown user)
// get a bounce through the outbound queue while the others keep their
// copy; a temporary refusal makes the whole delivery fail (451, the client
// retries, and a recipient may then get a copy twice, never none).
type LMTP struct {
	// Address of the LMTP server: "unix//run/dovecot/lmtp" or
	// "tcp/127.0.0.1:24" (Caddy network address syntax). Required.
	Address string `json:"address,omitempty"`

	// Hostname sent in LHLO. Default: the machine's host name.
	Hostname string `json:"hostname,omitempty"`

	// Timeout for the whole exchange with the server. Default: 2m.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// RecipientAddress chooses what is sent as RCPT TO: "mailbox" (the
	// local account's canonical address, default) or "original" (the
	// address the sender used, e.g. an alias or user+tag).
	RecipientAddress string `json:"recipient_address,omitempty"`

	network, addr string
	logger        *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (LMTP) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.delivery.lmtp", New: func() caddy.Module { return new(LMTP) }}
}

// Provision checks the config.
func (l *LMTP) Provision(ctx caddy.Context) error {
	l.logger = ctx.Logger()
	if l.Address == "" {
		return fmt.Errorf("address: the LMTP server's address is required")
	}
	na, err := caddy.ParseNetworkAddress(caddy.NewReplacer().ReplaceKnown(l.Address, ""))
	if err != nil {
		return fmt.Errorf("address: %v", err)
	}
	if na.PortRangeSize() > 1 {
		return fmt.Errorf("address: a single address is required, not a port range")
	}
	l.network, l.addr = na.Network, na.JoinHostPort(0)
	if na.IsUnixNetwork() {
		l.addr = na.Host
	}
	if l.Hostname == "" {
		l.Hostname, _ = os.Hostname()
	}
	if l.Timeout == 0 {
		l.Timeout = caddy.Duration(2 * time.Minute)
	}
	switch l.RecipientAddress {
	case "", "mailbox", "original":
	default:
		return fmt.Errorf("recipient_address: %q is not \"mailbox\" or \"original\"", l.RecipientAddress)
	}
	return nil
}

// Deliver sends the message to the LMTP server for the local recipients.
// The server answers for each recipient: when every one is accepted the
// delivery succeeds; when some are refused for good (5xx, a full mailbox)
// and none temporarily, it returns a *smtpapp.PartialFailure (the server
// then bounces them), or a 5xx if all were refused; any temporary failure
// makes it fail as a whole (451 to the client, which retries).
func (l *LMTP) Deliver(ctx context.Context, env *smtpapp.Envelope, msg *smtpapp.Message) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(l.Timeout))
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, l.network, l.addr)
	if err != nil {
		return fmt.Errorf("connecting to the LMTP server: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello(l.Hostname); err != nil {
		return fmt.Errorf("LHLO: %w", err)
	}
	// SMTPUTF8 (RFC 6531) goes on where the LMTP server offers it
	// (Dovecot does); without it, a UTF-8 address is refused there.
	mailOpts := &smtp.MailOptions{}
	if ok, _ := c.Extension("SMTPUTF8"); ok && env.UTF8 {
		mailOpts.UTF8 = true
	}
	if err := c.Mail(env.From, mailOpts); err != nil {
		return fmt.Errorf("MAIL FROM: %w", err)
	}
	var failed []smtpapp.FailedRecipient
	byAddr := map[string]smtpapp.Recipient{} // RCPT address -> recipient
	seen := map[string]bool{}
	accepted := 0
	for _, r := range env.Recipients {
		if !r.Local() {
			continue
		}
		to := r.Mailbox
		if l.RecipientAddress == "original" {
			to = r.Address
		}
		if seen[to] {
			continue
		}
		seen[to] = true
		byAddr[to] = r
		if err := c.Rcpt(to, nil); err != nil {
			f, perr := permanent(r, err)
			if perr != nil {
				return fmt.Errorf("RCPT TO:<%s>: %w", to, perr)
			}
			failed = append(failed, f)
			continue
		}
		accepted++
	}
	if accepted == 0 {
		return allFailed(failed)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := msg.WriteTo(w); err != nil {
		return fmt.Errorf("sending the message: %w", err)
	}
	results, err := w.CloseWithLMTPResponse()
	var lerr smtp.LMTPDataError
	switch {
	case errors.As(err, &lerr):
		if len(results)+len(lerr) != accepted {
			// Some replies never came (the connection broke): those
			// recipients' fate is unknown, so the whole delivery failed.
			return fmt.Errorf("end of data: %w", err)
		}
		for rcpt, e := range lerr {
			f, perr := permanent(byAddr[rcpt], e)
			if perr != nil {
				return fmt.Errorf("LMTP server: <%s>: %w", rcpt, perr)
			}
			failed = append(failed, f)
		}
	case err != nil:
		return fmt.Errorf("end of data: %w", err)
	}
	c.Quit()
	l.logger.Debug("delivered over LMTP", zap.String("id", env.ID), zap.Int("accepted", len(results)), zap.Int("refused", len(failed)))
	if len(results) == 0 {
		return allFailed(failed)
	}
	if len(failed) > 0 {
		return &smtpapp.PartialFailure{Failed: failed}
	}
	return nil
}

// permanent turns a 5xx refusal into a FailedRecipient; anything else is
// returned as an error (temporary).
func permanent(r smtpapp.Recipient, err error) (smtpapp.FailedRecipient, error) {
	var e *smtp.SMTPError
	if errors.As(err, &e) && e.Code/100 == 5 {
		return smtpapp.FailedRecipient{Recipient: r, Reply: e}, nil
	}
	return smtpapp.FailedRecipient{}, err
}

// allFailed is the error for a message no recipient accepted: the first
// permanent refusal, returned bare (unwrapped) so that the client gets it
// as the reply to DATA.
func allFailed(failed []smtpapp.FailedRecipient) error {
	if len(failed) == 0 {
		return fmt.Errorf("no local recipient")
	}
	return failed[0].Reply
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	lmtp <address> {
//		hostname <name>
//		timeout <duration>
//		recipient_address mailbox|original
//	}
func (l *LMTP) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := caddyargs.Header(d, &l.Address); err != nil {
		return err
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "address":
			if !d.Args(&l.Address) {
				return d.ArgErr()
			}
		case "hostname":
			if !d.Args(&l.Hostname) {
				return d.ArgErr()
			}
		case "recipient_address":
			if !d.Args(&l.RecipientAddress) {
				return d.ArgErr()
			}
		case "timeout":
			var err error
			if l.Timeout, err = caddyargs.Duration(d); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized lmtp option %q", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner      = (*LMTP)(nil)
	_ caddyfile.Unmarshaler  = (*LMTP)(nil)
	_ smtpapp.DeliveryTarget = (*LMTP)(nil)
)
