package smtpapp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// memLimit is the body size kept in memory; larger bodies are spooled.
const memLimit = 1 << 20

func (s *Server) newConn(nc *netConn) *Conn {
	ctx, cancel := context.WithDeadline(context.Background(), nc.deadline)
	c := &Conn{
		ID:     newID(),
		server: s,
		ctx:    ctx,
		cancel: cancel,
		start:  time.Now(),
		remote: addrPortOf(nc.RemoteAddr()),
		local:  addrPortOf(nc.LocalAddr()),
		net:    nc,

		replyLineStart: true,
	}
	c.logger = s.logger.With(zap.String("conn", c.ID), zap.String("remote", c.remote.String()))
	nc.conn = c
	return c
}

// runConnect runs the connect hooks.
func (s *Server) runConnect(c *Conn) error {
	for i, h := range s.handlers {
		if hook, ok := h.(ConnectHook); ok {
			if err := hook.Connect(c.ctx, c); err != nil {
				s.refused(c, "connect", i, err)
				return err
			}
		}
	}
	return nil
}

// refused logs, counts and reports a hook's refusal.
func (s *Server) refused(c *Conn, stage string, idx int, err error) {
	module := s.moduleIDs[idx]
	reason := err.Error()
	var e *Error
	if errors.As(err, &e) {
		reason = e.Message
	}
	c.logger.Info("refused", zap.String("stage", stage), zap.String("module", module), zap.String("reason", reason))
	s.metrics.refused(s.name, stage, module, refusalLabel(err))
	c.Emit(Event{Kind: EventRefused, Module: module, Detail: reason})
}

func refusalLabel(err error) string {
	var r *Refusal
	if errors.As(err, &r) && r.Label != "" {
		return r.Label
	}
	var e *Error
	if errors.As(err, &e) {
		return strconv.Itoa(e.Code)
	}
	return "error"
}

type backend struct{ s *Server }

// NewSession is called by go-smtp on the first HELO/EHLO (and again after
// STARTTLS).
func (b backend) NewSession(sc *smtp.Conn) (smtp.Session, error) {
	nc := netConnOf(sc.Conn())
	if nc == nil || nc.conn == nil {
		return nil, Errorf(421, [3]int{4, 3, 0}, "Internal error")
	}
	c := nc.conn
	ss := &session{c: c, srv: b.s}
	if err := ss.check(); err != nil {
		return nil, c.own(err)
	}
	helo := sc.Hostname()
	c.mu.Lock()
	if st, ok := sc.TLSConnectionState(); ok {
		c.tlsState = &st
	}
	c.helo = helo
	c.mu.Unlock()
	for i, h := range b.s.handlers {
		if hook, ok := h.(HeloHook); ok {
			if err := hook.Helo(c.ctx, c, helo); err != nil {
				b.s.refused(c, "helo", i, err)
				return nil, c.own(ss.fail(err))
			}
		}
	}
	return ss, nil
}

// session is one go-smtp session (one per EHLO after connect or STARTTLS)
// on a Conn.
type session struct {
	c        *Conn
	srv      *Server
	messages atomic.Int32 // go-smtp runs BDAT's Data in its own goroutine
}

// check refuses everything once the stream had a bare CR/LF or the
// connection is closing.
func (ss *session) check() error {
	if ss.c.net.bareEOL.Load() {
		ss.c.logger.Info("refused", zap.String("stage", "command"), zap.String("reason", "bare CR or LF in command stream"))
		ss.c.Emit(Event{Kind: EventProtocolError, Detail: "bare CR or LF"})
		ss.c.closeAfterReply()
		return replyBareLFCommand
	}
	if ss.c.net.closing.Load() {
		return replyClosing
	}
	return nil
}

// fail counts an error reply; past the limit it turns into a 421 that ends
// the connection. A 421 from a hook also ends it.
func (ss *session) fail(err error) error {
	err = reply(err)
	var e *Error
	if errors.As(err, &e) && e.Code == 421 {
		ss.c.closeAfterReply()
		return err
	}
	if n := ss.c.countError(); n >= ss.srv.Limits.withDefaults().MaxErrors {
		ss.c.logger.Info("closing: too many errors", zap.Int("errors", n))
		ss.c.Emit(Event{Kind: EventProtocolError, Detail: "too many errors"})
		ss.c.closeAfterReply()
		return replyTooManyErrors
	}
	return err
}

func (ss *session) Reset() { ss.c.resetTransaction() }

func (ss *session) Logout() error { return nil }

// AuthMechanisms are offered only where go-smtp allows AUTH (under TLS).
func (ss *session) AuthMechanisms() []string {
	if ss.srv.app.accounts == nil {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.srv.app.accounts == nil {
		return nil, ss.c.own(smtp.ErrAuthUnsupported)
	}
	if ss.c.TLS() == nil {
		return nil, ss.c.own(Errorf(523, [3]int{5, 7, 10}, "Encryption required for requested authentication mechanism"))
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				ss.c.logger.Info("auth refused: authorization identity differs", zap.String("user", username), zap.String("authzid", identity))
				ss.c.Emit(Event{Kind: EventAuthFailed, Detail: username})
				return ss.c.own(ss.authFailed(replyAuthzid))
			}
			return ss.c.own(ss.login(username, password))
		}), nil
	case sasl.Login:
		return &loginServer{authenticate: func(u, p string) error { return ss.c.own(ss.login(u, p)) }}, nil
	}
	return nil, ss.c.own(smtp.ErrAuthUnknownMechanism)
}

func (ss *session) login(username, password string) error {
	if err := ss.check(); err != nil {
		return err
	}
	c := ss.c
	// RFC 4954 4: no AUTH during a mail transaction (the sender was
	// checked, or not, as an unauthenticated client's).
	c.mu.Lock()
	inMail := c.inMail
	c.mu.Unlock()
	if inMail {
		return ss.fail(replyAuthInTransaction)
	}
	for i, h := range ss.srv.handlers {
		if hook, ok := h.(AuthHook); ok {
			if err := hook.Auth(c.ctx, c, username); err != nil {
				ss.srv.refused(c, "auth", i, err)
				return ss.fail(err)
			}
		}
	}
	account, err := ss.srv.app.accounts.Authenticate(c.ctx, username, password)
	if err != nil {
		if !errors.Is(err, ErrAuthFailed) {
			c.logger.Error("accounts provider failed", zap.String("user", username), zap.Error(err))
			return Errorf(454, [3]int{4, 7, 0}, "Temporary authentication failure")
		}
		c.logger.Info("auth failed", zap.String("user", username))
		c.Emit(Event{Kind: EventAuthFailed, Detail: username})
		return ss.authFailed(replyAuthFailed)
	}
	c.mu.Lock()
	c.account = account
	c.mu.Unlock()
	c.logger.Info("authenticated", zap.String("account", account))
	return nil
}

func (ss *session) authFailed(reply error) error {
	n := ss.c.countAuthFailure()
	if n >= ss.srv.Limits.withDefaults().MaxAuthFailures {
		ss.c.closeAfterReply()
		return replyTooManyAuth
	}
	return ss.fail(reply)
}

// The go-smtp Session methods: every error they return is one of our
// replies (own), so that the replies go-smtp makes up itself can be told
// apart and counted (see Conn.observeReplies).
func (ss *session) Mail(from string, opts *smtp.MailOptions) error { return ss.c.own(ss.mail(from)) }

func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error { return ss.c.own(ss.rcpt(to)) }

func (ss *session) Data(r io.Reader) error {
	err := ss.data(r)
	if errors.Is(err, smtp.ErrDataReset) {
		return err // BDAT cut short by RSET: go-smtp writes no reply for it
	}
	return ss.c.own(err)
}

func (ss *session) mail(from string) error {
	if err := ss.check(); err != nil {
		return err
	}
	c := ss.c
	lim := ss.srv.Limits.withDefaults()
	if int(ss.messages.Load()) >= lim.MaxMessages {
		c.closeAfterReply()
		return Errorf(421, [3]int{4, 7, 0}, "Too many messages in one session, closing connection")
	}
	c.mu.Lock()
	nested := c.inMail
	c.mu.Unlock()
	if nested {
		return ss.fail(replyNestedMail)
	}
	account := c.Account()
	if ss.srv.RequireAuth && account == "" {
		return ss.fail(replyAuthRequired)
	}
	if from != "" {
		addr, err := ParseAddress(from)
		if err != nil {
			c.Emit(Event{Kind: EventProtocolError, Detail: "bad sender address"})
			return ss.fail(err)
		}
		from = addr.String()
		if account != "" && !ss.ownsSender(account, addr) {
			c.logger.Info("refused", zap.String("stage", "mail"), zap.String("account", account), zap.String("from", from), zap.String("reason", "sender not owned"))
			return ss.fail(replySenderNotOwned)
		}
	} else if account != "" {
		return ss.fail(replyNullSender)
	}
	c.mu.Lock()
	c.from = from
	c.inMail = true
	c.mu.Unlock()
	for i, h := range ss.srv.handlers {
		if hook, ok := h.(MailHook); ok {
			if err := hook.Mail(c.ctx, c, from); err != nil {
				ss.srv.refused(c, "mail", i, err)
				c.resetTransaction()
				return ss.fail(err)
			}
		}
	}
	return nil
}

// ownsSender: an account may send as any address that routes to it (its
// own, aliases, +tags) and whatever the provider allows besides.
func (ss *session) ownsSender(account string, addr Address) bool {
	app := ss.srv.app
	if app.IsLocalDomain(addr.Domain) {
		if mb, err := app.LookupMailbox(ss.c.ctx, addr); err == nil && mb == account {
			return true
		}
	}
	if sa, ok := app.accounts.(SenderAuthorizer); ok {
		return sa.MaySendAs(ss.c.ctx, account, lowerASCII(addr.Local)+"@"+addr.Domain)
	}
	return false
}

func (ss *session) rcpt(to string) error {
	if err := ss.check(); err != nil {
		return err
	}
	c := ss.c
	addr, err := ParseAddress(to)
	if err != nil {
		c.Emit(Event{Kind: EventProtocolError, Detail: "bad recipient address"})
		return ss.fail(err)
	}
	rcpt, err := ss.route(addr)
	if err != nil {
		return ss.fail(err)
	}
	for i, h := range ss.srv.handlers {
		if hook, ok := h.(RcptHook); ok {
			if err := hook.Rcpt(c.ctx, c, rcpt); err != nil {
				ss.srv.refused(c, "rcpt", i, err)
				return ss.fail(err)
			}
		}
	}
	c.mu.Lock()
	c.rcpts = append(c.rcpts, rcpt)
	c.mu.Unlock()
	return nil
}

// route decides where a recipient goes: a local mailbox, the outbound
// target (for authenticated users and trusted networks), or nowhere.
func (ss *session) route(addr Address) (Recipient, error) {
	c, app := ss.c, ss.srv.app
	if app.IsLocalDomain(addr.Domain) {
		mb, err := app.LookupMailbox(c.ctx, addr)
		switch {
		case err == nil:
			return Recipient{Address: addr.String(), Mailbox: mb}, nil
		case errors.Is(err, ErrNoSuchUser):
			c.logger.Info("refused", zap.String("stage", "rcpt"), zap.String("to", addr.String()), zap.String("reason", "no such mailbox"))
			ss.srv.metrics.refused(ss.srv.name, "rcpt", "", "no_such_user")
			c.Emit(Event{Kind: EventUnknownRecipient, Detail: addr.String()})
			return Recipient{}, replyNoSuchUser
		default:
			c.logger.Error("recipient lookup failed", zap.String("to", addr.String()), zap.Error(err))
			return Recipient{}, replyTempLookup
		}
	}
	if c.Account() == "" && !ss.srv.trustedIP(c.RemoteIP()) || app.outbound == nil {
		c.logger.Info("refused", zap.String("stage", "rcpt"), zap.String("to", addr.String()), zap.String("reason", "relay denied"))
		ss.srv.metrics.refused(ss.srv.name, "rcpt", "", "relay_denied")
		c.Emit(Event{Kind: EventRelayDenied, Detail: addr.String()})
		return Recipient{}, replyRelayDenied
	}
	return Recipient{Address: addr.String()}, nil
}

func (ss *session) data(r io.Reader) error {
	if err := ss.check(); err != nil {
		return err
	}
	c, srv := ss.c, ss.srv
	ss.messages.Add(1)
	c.net.inData.Store(true)
	msg, err := readMessage(r, memLimit, srv.app.SpoolDir)
	c.net.inData.Store(false)
	if err != nil {
		return ss.dataError(err)
	}
	defer msg.Discard()
	if c.net.bareEOL.Load() {
		return ss.dataError(errBareLineEnd)
	}
	// One pass over the header section: count the hops (a mail loop ends
	// here, RFC 5321 6.3) and drop results that claim to be ours but were
	// made elsewhere (RFC 8601 5).
	hops := 0
	if err := msg.removeHeaderFields(func(name, value []byte) bool {
		if bytes.EqualFold(name, []byte("Received")) {
			hops++
			return false
		}
		return bytes.EqualFold(name, []byte("Authentication-Results")) && srv.app.isOwnHostname(authservID(string(value)))
	}); err != nil {
		if errors.Is(err, errHeaderTooLarge) {
			c.logger.Info("refused", zap.String("stage", "data"), zap.String("reason", "header section too large"))
			srv.metrics.refused(srv.name, "data", "", "header_too_large")
			ss.logMessage(msg, "rejected", err)
			return ss.fail(replyHeaderTooLarge)
		}
		c.logger.Error("reading the header section", zap.Error(err))
		return replyDeliveryFailed
	}
	if max := srv.Limits.withDefaults().MaxHops; hops > max {
		c.logger.Info("refused", zap.String("stage", "data"), zap.String("reason", "mail loop"), zap.Int("hops", hops))
		srv.metrics.refused(srv.name, "data", "", "too_many_hops")
		ss.logMessage(msg, "rejected", replyTooManyHops)
		return ss.fail(replyTooManyHops)
	}
	for i, h := range srv.handlers {
		if hook, ok := h.(DataHook); ok {
			if err := hook.Data(c.ctx, c, msg); err != nil {
				srv.refused(c, "data", i, err)
				ss.logMessage(msg, "rejected", err)
				return ss.fail(err)
			}
		}
	}
	if len(msg.authResults) > 0 {
		msg.AddHeader("Authentication-Results", srv.Hostname+";\r\n\t"+strings.Join(msg.authResults, ";\r\n\t"))
	}
	env := ss.envelope()
	if err := ss.applySpamPolicy(msg, env); err != nil {
		ss.logMessage(msg, "rejected", err)
		return ss.fail(err)
	}
	msg.AddHeader("Received", ss.received(env))
	if err := ss.deliver(env, msg); err != nil {
		c.logger.Error("delivery failed", zap.String("id", env.ID), zap.Error(err))
		ss.logMessage(msg, "failed", err)
		// A target that refused the message for good for every recipient
		// says so with a bare 5xx *Error; anything else (a 5xx wrapped in
		// another failure included) is temporary.
		if e, ok := err.(*Error); ok && e.Code/100 == 5 {
			return e
		}
		return replyDeliveryFailed
	}
	srv.metrics.bytes.WithLabelValues(srv.name).Add(float64(msg.Size()))
	ss.logMessage(msg, "delivered", nil)
	return &Error{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + env.ID}
}

// commentSafe keeps printable ASCII other than parentheses and
// backslashes, for a header comment; at most 64 bytes.
func commentSafe(s string) string {
	b := make([]byte, 0, min(len(s), 64))
	for i := 0; i < len(s) && len(b) < 64; i++ {
		if ch := s[i]; ch > 0x20 && ch < 0x7f && ch != '(' && ch != ')' && ch != '\\' {
			b = append(b, ch)
		} else {
			b = append(b, '?')
		}
	}
	return string(b)
}

// authservID is the authserv-id of an Authentication-Results value:
// comments (nested, with escapes) and white space skipped, a quoted string
// unquoted, a trailing dot dropped, lower-cased.
func authservID(value string) string {
	var id strings.Builder
	depth, quoted := 0, false
	for i := 0; i < len(value); i++ {
		ch := value[i]
		switch {
		case ch == '\\' && (depth > 0 || quoted) && i+1 < len(value):
			i++
			if depth == 0 {
				id.WriteByte(value[i])
			}
		case depth > 0:
			switch ch {
			case '(':
				depth++
			case ')':
				depth--
			}
		case ch == '"':
			quoted = !quoted
		case quoted:
			id.WriteByte(ch)
		case ch == '(':
			depth = 1
		case ch == ';':
			i = len(value)
		case ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n':
			if id.Len() > 0 { // the id ends; a version may follow
				i = len(value)
			}
		default:
			id.WriteByte(ch)
		}
	}
	return strings.ToLower(strings.TrimSuffix(id.String(), "."))
}

func (ss *session) dataError(err error) error {
	c := ss.c
	switch {
	case errors.Is(err, smtp.ErrDataReset):
		return err // BDAT cut short by RSET: no reply is written for it
	case errors.Is(err, errBareLineEnd):
		c.logger.Info("refused", zap.String("stage", "data"), zap.String("reason", "bare CR or LF in message"))
		ss.srv.metrics.refused(ss.srv.name, "data", "", "bare_line_end")
		ss.srv.metrics.messages.WithLabelValues(ss.srv.name, "rejected").Inc()
		c.Emit(Event{Kind: EventProtocolError, Detail: "bare CR or LF in message"})
		return ss.fail(replyBareLineEnd)
	case errors.Is(err, smtp.ErrDataTooLarge):
		c.logger.Info("refused", zap.String("stage", "data"), zap.String("reason", "message too large"))
		ss.srv.metrics.refused(ss.srv.name, "data", "", "too_large")
		ss.srv.metrics.messages.WithLabelValues(ss.srv.name, "rejected").Inc()
		return ss.fail(smtp.ErrDataTooLarge)
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	c.logger.Info("reading message failed", zap.Error(err))
	return Errorf(451, [3]int{4, 3, 0}, "Error reading message")
}

func (ss *session) envelope() *Envelope {
	c := ss.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return &Envelope{
		ID:         newID(),
		From:       c.from,
		Recipients: append([]Recipient(nil), c.rcpts...),
		ClientIP:   c.remote.Addr(),
		Helo:       c.helo,
		Account:    c.account,
		Received:   time.Now(),
	}
}

// applySpamPolicy compares the summed score with the thresholds.
func (ss *session) applySpamPolicy(msg *Message, env *Envelope) error {
	score := ss.c.Score()
	if len(score.Reasons) == 0 {
		return nil
	}
	tag, reject := 5.0, 10.0
	if p := ss.srv.Spam; p != nil {
		if p.TagScore != nil {
			tag = *p.TagScore
		}
		if p.RejectScore != nil {
			reject = *p.RejectScore
		}
	}
	var reasons []string
	for _, r := range score.Reasons {
		reasons = append(reasons, fmt.Sprintf("%s(%+.1f): %s", r.Module, r.Points, r.Reason))
	}
	if score.Total >= reject {
		ss.c.logger.Info("refused", zap.String("stage", "data"), zap.String("reason", "spam score"),
			zap.Float64("score", score.Total), zap.Strings("reasons", reasons))
		ss.srv.metrics.refused(ss.srv.name, "data", "", "spam")
		return replySpam
	}
	status := "No"
	if score.Total >= tag {
		status = "Yes"
		env.Junk = true
	}
	msg.AddHeader("X-Spam-Score", strconv.FormatFloat(score.Total, 'f', 1, 64))
	msg.AddHeader("X-Spam-Status", fmt.Sprintf("%s, score=%.1f tag=%.1f reject=%.1f\r\n\t%s", status, score.Total, tag, reject, strings.Join(reasons, "\r\n\t")))
	return nil
}

// received builds the Received field (RFC 5321 4.4, protocol per RFC 3848).
func (ss *session) received(env *Envelope) string {
	c := ss.c
	proto := "ESMTP"
	if c.TLS() != nil {
		proto += "S"
	}
	if env.Account != "" {
		proto += "A"
	}
	var b strings.Builder
	if ValidHostname(env.Helo) {
		fmt.Fprintf(&b, "from %s ([%s])", env.Helo, env.ClientIP)
	} else { // whatever the client said must not forge the trace
		fmt.Fprintf(&b, "from [%s] (helo=%s)", env.ClientIP, commentSafe(env.Helo))
	}
	fmt.Fprintf(&b, "\r\n\tby %s (caddy-smtp) with %s id %s", ss.srv.Hostname, proto, env.ID)
	if len(env.Recipients) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", env.Recipients[0].Address)
	}
	b.WriteString("; ")
	b.WriteString(env.Received.Format(time.RFC1123Z))
	return b.String()
}

// deliver hands local recipients to the local target and remote ones to
// the outbound target; both must have stored the message. With a Stager
// as local target, the local copies become visible only once the outbound
// target has the message.
func (ss *session) deliver(env *Envelope, msg *Message) error {
	var local, remote []Recipient
	for _, r := range env.Recipients {
		if r.Local() {
			local = append(local, r)
		} else {
			remote = append(remote, r)
		}
	}
	app := ss.srv.app
	ctx := context.WithoutCancel(ss.c.ctx)
	commit := func() error { return nil }
	if len(local) > 0 {
		e := *env
		e.Recipients = local
		stager, ok := app.localDelivery.(Stager)
		if ok && len(remote) > 0 {
			c, abort, err := stager.Stage(ctx, &e, msg)
			if err != nil {
				return fmt.Errorf("local delivery: %w", err)
			}
			defer abort()
			commit = c
		} else if err := app.localDelivery.Deliver(ctx, &e, msg); err != nil {
			// Every local recipient refused for good, but remote ones
			// remain: those still get the message, the others a bounce.
			if refused, ok := err.(*Error); ok && refused.Code/100 == 5 && len(remote) > 0 {
				failed := make([]FailedRecipient, len(local))
				for i, r := range local {
					failed[i] = FailedRecipient{Recipient: r, Reply: refused}
				}
				err = &PartialFailure{Failed: failed}
			}
			if err := ss.bounceFailed(ctx, &e, msg, err); err != nil {
				if refused, ok := err.(*Error); ok && refused.Code/100 == 5 {
					return refused // every recipient refused for good
				}
				return fmt.Errorf("local delivery: %w", err)
			}
		}
	}
	if len(remote) > 0 {
		e := *env
		e.Recipients = remote
		e.Junk = false
		if err := app.outbound.Deliver(ctx, &e, msg); err != nil {
			return fmt.Errorf("outbound: %w", err)
		}
	}
	if err := commit(); err != nil {
		return fmt.Errorf("local delivery: %w", err)
	}
	return nil
}

// bounceFailed handles a local delivery that failed for some recipients
// only: their sender gets a bounce (nobody, for the null sender) and the
// message counts as accepted. Any other error is returned as it is.
func (ss *session) bounceFailed(ctx context.Context, env *Envelope, msg *Message, err error) error {
	var pf *PartialFailure
	if !errors.As(err, &pf) {
		return err
	}
	for _, f := range pf.Failed {
		ss.c.logger.Info("recipient refused by the mailbox", zap.String("id", env.ID), zap.String("to", f.Address), zap.String("reply", f.Reply.Error()))
	}
	if env.From == "" {
		return nil // never a bounce for a bounce
	}
	b, ok := ss.srv.app.outbound.(Bouncer)
	if !ok {
		// The others have their copy: a 451 would make the client send it
		// again and again. Accept, and say loudly who did not get it.
		ss.c.logger.Error("no outbound queue to bounce through: the sender is not told about the refused recipients",
			zap.String("id", env.ID), zap.String("from", env.From))
		return nil
	}
	return b.Bounce(ctx, env, msg, pf.Failed)
}

func (ss *session) logMessage(msg *Message, result string, err error) {
	c := ss.c
	c.mu.Lock()
	from := c.from
	to := make([]string, len(c.rcpts))
	for i, r := range c.rcpts {
		to[i] = r.Address
	}
	c.mu.Unlock()
	fields := []zap.Field{zap.String("from", from), zap.Strings("to", to), zap.Int64("size", msg.Size()), zap.String("result", result)}
	if err != nil {
		fields = append(fields, zap.String("reason", err.Error()))
	}
	c.logger.Info("message", fields...)
	ss.srv.metrics.messages.WithLabelValues(ss.srv.name, result).Inc()
}

var _ caddy.Module = (*App)(nil)
