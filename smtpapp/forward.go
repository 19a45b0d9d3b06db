package smtpapp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// maxForwardDepth bounds how many forwarding addresses one recipient may
// pass through (a forward to an address that forwards again...).
const maxForwardDepth = 8

var (
	replyForwardLoop   = Errorf(554, [3]int{5, 4, 6}, "Mail forwarding loop")
	replySRSBounceOnly = Errorf(550, [3]int{5, 7, 1}, "This address takes only delivery status notifications (MAIL FROM:<>)")
	replyNoForwarding  = Errorf(451, [3]int{4, 3, 5}, "Forwarding is not configured here, try again later")
)

// errForwardLoop is an expansion that comes back to an address on its path.
var errForwardLoop = errors.New("forwarding loop")

// forwards returns the targets of a local address that forwards, trying
// it without its +tag too; nil when it does not forward.
func (a *App) forwards(ctx context.Context, addr Address) ([]string, error) {
	fw, ok := a.accounts.(Forwarder)
	if !ok {
		return nil, nil
	}
	targets, err := fw.Forwards(ctx, strings.ToLower(addr.Local)+"@"+addr.Domain)
	if err == nil && targets == nil {
		if base := StripSubaddress(addr.Local); base != addr.Local {
			targets, err = fw.Forwards(ctx, strings.ToLower(base)+"@"+addr.Domain)
		}
	}
	return targets, err
}

// expandForward expands a local address that forwards into its targets
// (nil, nil when it does not forward): local targets become local
// recipients (routed again: they may forward too), remote ones remote
// recipients marked ForwardedFor. A target seen twice is kept once; an
// expansion that comes back to an address on its own path is a loop.
func (c *Conn) expandForward(addr Address) ([]Recipient, error) {
	app := c.server.app
	targets, err := app.forwards(c.ctx, addr)
	if err != nil || targets == nil {
		return nil, err
	}
	var out []Recipient
	var walk func(a Address, targets []string, path []string) error
	walk = func(a Address, targets []string, path []string) error {
		key := strings.ToLower(a.Local) + "@" + a.Domain
		if slices.Contains(path, key) || len(path) >= maxForwardDepth {
			return errForwardLoop
		}
		path = append(path, key)
		for _, t := range targets {
			ta, err := ParseAddress(t)
			if err != nil {
				c.Logger().Warn("forwarding target skipped: bad address", zap.String("alias", key), zap.String("target", t))
				continue
			}
			tkey := strings.ToLower(ta.Local) + "@" + ta.Domain
			if !app.IsLocalDomain(ta.Domain) {
				if !slices.ContainsFunc(out, func(r Recipient) bool { return !r.Local() && strings.EqualFold(r.Address, tkey) }) {
					out = append(out, Recipient{Address: ta.String(), ForwardedFor: key})
				}
				continue
			}
			if slices.Contains(path, tkey) {
				return errForwardLoop
			}
			more, err := app.forwards(c.ctx, ta)
			if err != nil {
				return err
			}
			if more != nil {
				if err := walk(ta, more, path); err != nil {
					return err
				}
				continue
			}
			mb, err := app.LookupMailbox(c.ctx, ta)
			if errors.Is(err, ErrNoSuchUser) {
				c.Logger().Warn("forwarding target skipped: no such local mailbox", zap.String("alias", key), zap.String("target", t))
				continue
			}
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(out, func(r Recipient) bool { return r.Mailbox == mb }) {
				out = append(out, Recipient{Address: ta.String(), Mailbox: mb, ForwardedFor: key})
			}
		}
		return nil
	}
	if err := walk(addr, targets, nil); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, ErrNoSuchUser
	}
	return out, nil
}

// routeForward routes a local address that forwards (ok false when it
// does not).
func (c *Conn) routeForward(addr Address) (rcpts []Recipient, ok bool, err error) {
	rcpts, err = c.expandForward(addr)
	to := zap.String("to", addr.String())
	switch {
	case err == nil && rcpts == nil:
		return nil, false, nil
	case errors.Is(err, ErrNoSuchUser):
		return nil, true, c.refuse(refusal{stage: "rcpt", err: replyNoSuchUser, label: "no_such_user", reason: "forwarding address without a valid target",
			event: EventUnknownRecipient, detail: addr.String(), fields: []zap.Field{to}})
	case errors.Is(err, errForwardLoop):
		return nil, true, c.refuse(refusal{stage: "rcpt", err: replyForwardLoop, label: "forward_loop", reason: "forwarding loop", fields: []zap.Field{to}})
	case err != nil:
		c.Logger().Error("forwarding lookup failed", to, zap.Error(err))
		return nil, true, c.reply(replyTempLookup, false)
	}
	for _, r := range rcpts {
		if !r.Local() && c.server.app.outbound == nil {
			c.Logger().Error("forwarding to a remote address needs an outbound target", to, zap.String("target", r.Address))
			return nil, true, c.reply(replyNoForwarding, false)
		}
	}
	return rcpts, true, nil
}

// routeSRS routes a local address in SRS form: one that verifies (our
// hash, not expired) stands for the original sender of a message we
// forwarded, and takes bounces (null sender) for it, sent on through the
// queue without AUTH; anything else in SRS form is refused as unknown.
func (c *Conn) routeSRS(addr Address) (Recipient, error) {
	app := c.server.app
	to := zap.String("to", addr.String())
	noSuch := func(reason string) error {
		return c.refuse(refusal{stage: "rcpt", err: replyNoSuchUser, label: "srs_invalid", reason: reason,
			event: EventUnknownRecipient, detail: addr.String(), fields: []zap.Field{to}})
	}
	orig, _, err := app.ReverseSRS(c.ctx, addr)
	switch {
	case errors.Is(err, ErrSRSInvalid):
		return Recipient{}, noSuch("SRS address does not verify")
	case err != nil:
		c.Logger().Error("SRS secret unavailable", to, zap.Error(err))
		return Recipient{}, c.reply(replyTempLookup, false)
	}
	if c.From() != "" {
		return Recipient{}, c.refuse(refusal{stage: "rcpt", err: replySRSBounceOnly, label: "srs_not_bounce", reason: "SRS address with a non-null sender",
			fields: []zap.Field{to, zap.String("from", c.From())}})
	}
	oa, err := ParseAddress(orig)
	if err != nil {
		return Recipient{}, noSuch("SRS address stands for a bad address")
	}
	if app.IsLocalDomain(oa.Domain) {
		if IsSRS(oa.Local) {
			return Recipient{}, noSuch("SRS address stands for another one of ours")
		}
		mb, err := app.LookupMailbox(c.ctx, oa)
		switch {
		case errors.Is(err, ErrNoSuchUser):
			return Recipient{}, noSuch("SRS address stands for an unknown local address")
		case err != nil:
			c.Logger().Error("recipient lookup failed", to, zap.Error(err))
			return Recipient{}, c.reply(replyTempLookup, false)
		}
		return Recipient{Address: oa.String(), Mailbox: mb, ForwardedFor: strings.ToLower(addr.String())}, nil
	}
	if app.outbound == nil {
		return Recipient{}, c.reply(replyNoForwarding, false)
	}
	return Recipient{Address: oa.String(), ForwardedFor: addr.Local + "@" + addr.Domain}, nil
}

// addRecipients adds routed recipients; a forwarded one that the
// transaction already has (same mailbox, or same remote address) is
// left out, so that each target gets one copy.
func (c *Conn) addRecipients(rs []Recipient) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range rs {
		if r.ForwardedFor != "" && slices.ContainsFunc(c.rcpts, func(o Recipient) bool {
			if r.Local() {
				return o.Mailbox == r.Mailbox
			}
			return !o.Local() && strings.EqualFold(o.Address, r.Address)
		}) {
			continue
		}
		c.rcpts = append(c.rcpts, r)
	}
}

// forwardedFor lists the local addresses that forwarded the current
// transaction's recipients (for the loop check on Delivered-To).
func (c *Conn) forwardedFor() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, r := range c.rcpts {
		if r.ForwardedFor != "" && !slices.Contains(out, r.ForwardedFor) {
			out = append(out, r.ForwardedFor)
		}
	}
	return out
}

// outboundBatch is one envelope for the outbound target.
type outboundBatch struct {
	env *Envelope
	msg *Message
}

// outboundBatches splits the remote recipients into envelopes: those
// given as they are keep the sender; the copies forwarded by each local
// address go in an envelope of their own, with the sender rewritten by
// SRS in that address's domain (not the null sender, nor a sender in a
// local domain, whose SPF passes here anyway) and a Delivered-To field
// naming the forwarding address, which the loop check looks for when
// the message comes back.
func (r *router) outboundBatches(ctx context.Context, env *Envelope, msg *Message, remote []Recipient) ([]outboundBatch, error) {
	var plain []Recipient
	var order []string
	byFwd := map[string][]Recipient{}
	for _, rc := range remote {
		if rc.ForwardedFor == "" {
			plain = append(plain, rc)
			continue
		}
		if _, ok := byFwd[rc.ForwardedFor]; !ok {
			order = append(order, rc.ForwardedFor)
		}
		byFwd[rc.ForwardedFor] = append(byFwd[rc.ForwardedFor], rc)
	}
	var out []outboundBatch
	if len(plain) > 0 {
		e := *env
		e.Recipients, e.Junk = plain, false
		out = append(out, outboundBatch{&e, msg})
	}
	for _, fwd := range order {
		e := *env
		e.Recipients, e.Junk = byFwd[fwd], false
		if from, err := r.srsSender(ctx, env.From, fwd); err != nil {
			return nil, err
		} else {
			e.From = from
		}
		out = append(out, outboundBatch{&e, msg.withField("Delivered-To", fwd)})
	}
	return out, nil
}

// srsSender is the sender of a copy forwarded by the local address fwd.
func (r *router) srsSender(ctx context.Context, from, fwd string) (string, error) {
	at := strings.LastIndexByte(from, '@')
	fat := strings.LastIndexByte(fwd, '@')
	if from == "" || at < 0 || fat < 0 || r.srsSecret == nil || (r.isLocal != nil && r.isLocal(strings.ToLower(from[at+1:]))) {
		return from, nil
	}
	secret, err := r.srsSecret(ctx)
	if err != nil {
		return "", fmt.Errorf("SRS secret: %w", err)
	}
	return SRSForward(secret, from, fwd[fat+1:], time.Now())
}

// withField returns a copy of m (sharing its body: never Discard it)
// with one more header field on top.
func (m *Message) withField(name, value string) *Message {
	cp := *m
	cp.AddHeader(name, value)
	return &cp
}

// forwardLoop returns the forwarding address that a Delivered-To value
// names ("" for none): the message was forwarded by this server already
// (the field is ours, see outboundBatches) and has come back.
func forwardLoop(forwarders []string, value []byte) string {
	v := strings.Trim(strings.TrimSpace(string(value)), "<>")
	for _, f := range forwarders {
		if strings.EqualFold(v, f) {
			return f
		}
	}
	return ""
}
