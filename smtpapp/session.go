package smtpapp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// backend gives go-smtp a session per connection; the connection was set
// up by the listener (see Server.newConn) and reaches go-smtp as a wire.
type backend struct{ s *Server }

// NewSession is called by go-smtp on the first HELO/EHLO. The HELO hooks
// already ran in the wire, which runs them for every greeting.
func (b backend) NewSession(sc *smtp.Conn) (smtp.Session, error) {
	w, ok := sc.Conn().(*wire)
	if !ok || w.conn == nil {
		return nil, replyInternal
	}
	if w.sess == nil { // a resumed session keeps its own (park.go)
		w.sess = &session{c: w.conn, srv: b.s}
	}
	return w.sess, nil
}

// session is the go-smtp session of one connection: it checks each
// command, runs the hooks and turns the router's result into the reply.
type session struct {
	c        *Conn
	srv      *Server
	messages atomic.Int32 // go-smtp runs BDAT's Data in its own goroutine
}

func (ss *session) Reset() { ss.c.resetTransaction() }

func (ss *session) Logout() error { return nil }

// AuthMechanisms are offered only under TLS (go-smtp asks for every EHLO).
func (ss *session) AuthMechanisms() []string {
	if ss.srv.app.accounts == nil || ss.c.TLS() == nil {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	c := ss.c
	c.setAuthMechanism(mech)
	switch {
	case ss.srv.app.accounts == nil:
		return nil, c.reply(smtp.ErrAuthUnsupported, true)
	case c.TLS() == nil: // the wire refuses it first; kept as the last word
		return nil, c.reply(replyAuthNeedsTLS, true)
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				c.Logger().Info("auth refused: authorization identity differs", zap.String("user", username), zap.String("authzid", identity))
				c.Emit(Event{Kind: EventAuthFailed, Detail: username})
				return ss.authFailed(replyAuthzid)
			}
			return ss.login(username, password)
		}), nil
	case sasl.Login:
		return &loginServer{authenticate: ss.login}, nil
	}
	return nil, c.reply(smtp.ErrAuthUnknownMechanism, true)
}

func (ss *session) login(username, password string) error {
	c := ss.c
	// RFC 4954 4: no AUTH during a mail transaction (the sender was
	// checked, or not, as an unauthenticated client's).
	if c.inTransaction() {
		return c.reply(replyAuthInTransaction, true)
	}
	if ss.srv.app.authFailures.locked(c.RemoteIP(), &ss.srv.limits) {
		c.Logger().Info("refused", zap.String("stage", "auth"), zap.String("reason", "too many failed authentications from the network"))
		ss.srv.metrics.refused(ss.srv.name, "auth", "", "auth_lockout")
		return c.reply(replyAuthLockout, true)
	}
	if err := ss.srv.hooks.runAuth(c, username); err != nil {
		return err
	}
	account, err := ss.srv.app.accounts.Authenticate(c.ctx, username, password)
	if err != nil {
		if !errors.Is(err, ErrAuthFailed) {
			c.Logger().Error("accounts provider failed", zap.String("user", username), zap.Error(err))
			return c.reply(replyAuthTemp, false)
		}
		c.Logger().Info("auth failed", zap.String("user", username))
		c.Emit(Event{Kind: EventAuthFailed, Detail: username})
		return ss.authFailed(replyAuthFailed)
	}
	c.setAccount(account)
	c.Logger().Info("authenticated", zap.String("account", account))
	return nil
}

// authFailed counts a failure for the connection and for its network.
func (ss *session) authFailed(reply *Error) error {
	c := ss.c
	ss.srv.app.authFailures.add(c.RemoteIP(), &ss.srv.limits)
	if c.countAuthFailure() >= ss.srv.limits.MaxAuthFailures {
		return c.reply(replyTooManyAuth, true)
	}
	return c.reply(reply, true)
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	return ss.mail(from, opts != nil && opts.RequireTLS, opts != nil && opts.UTF8)
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error { return ss.rcpt(to) }

func (ss *session) mail(from string, requireTLS, smtputf8 bool) error {
	c := ss.c
	if int(ss.messages.Load()) >= ss.srv.limits.MaxMessages {
		return c.refuse(refusal{stage: "mail", err: replyTooManyMessages, label: "too_many_messages"})
	}
	if c.inTransaction() {
		return c.reply(replyNestedMail, true)
	}
	account := c.Account()
	if ss.srv.RequireAuth && account == "" {
		return c.reply(replyAuthRequired, true)
	}
	if from != "" {
		addr, err := parseAddress(from, smtputf8)
		if err != nil {
			c.Emit(Event{Kind: EventProtocolError, Detail: "bad sender address"})
			return c.reply(replyOf(err), true)
		}
		from = addr.String()
		if err := ss.checkSender(account, addr); err != nil {
			return err
		}
	} else if account != "" {
		return c.reply(replyNullSender, true)
	}
	c.startTransaction(from, requireTLS, smtputf8)
	if err := ss.srv.hooks.runMail(c, from); err != nil {
		c.resetTransaction()
		return err
	}
	return nil
}

// checkSender: an account may send as any address that routes to it (its
// own, aliases, +tags) and whatever the provider allows besides; an
// unauthenticated, untrusted client may not use a local domain at all.
func (ss *session) checkSender(account string, addr Address) error {
	c, app := ss.c, ss.srv.app
	switch {
	case account != "" && !ss.ownsSender(account, addr):
		return c.refuse(refusal{stage: "mail", err: replySenderNotOwned, label: "sender_not_owned", reason: "sender not owned",
			fields: []zap.Field{zap.String("account", account), zap.String("from", addr.String())}})
	case account == "" && app.IsLocalDomain(addr.Domain) && !ss.srv.AllowLocalSenders && !c.Trusted():
		return c.refuse(refusal{stage: "mail", err: replyLocalSender, label: "local_sender", reason: "unauthenticated sender in a local domain",
			event: EventRefused, fields: []zap.Field{zap.String("from", addr.String())}})
	}
	return nil
}

func (ss *session) ownsSender(account string, addr Address) bool {
	app := ss.srv.app
	if app.IsLocalDomain(addr.Domain) {
		if mb, err := app.lookupOwner(ss.c.ctx, addr); err == nil && mb == account {
			return true
		}
	}
	if sa, ok := app.accounts.(SenderAuthorizer); ok {
		return sa.MaySendAs(ss.c.ctx, account, strings.ToLower(addr.Local)+"@"+addr.Domain)
	}
	return false
}

func (ss *session) rcpt(to string) error {
	c := ss.c
	addr, err := parseAddress(to, c.UTF8())
	if err != nil {
		c.Emit(Event{Kind: EventProtocolError, Detail: "bad recipient address"})
		return c.reply(replyOf(err), true)
	}
	rcpts, err := c.route(addr)
	if err != nil {
		return err
	}
	for _, rcpt := range rcpts {
		if err := ss.srv.hooks.runRcpt(c, rcpt); err != nil {
			return err
		}
	}
	c.addRecipients(rcpts)
	return nil
}

// Data reads the body (DATA or every BDAT chunk), checks it, runs the
// hooks and hands it to the router. The reply is go-smtp's to write.
func (ss *session) Data(r io.Reader) error {
	c := ss.c
	ss.messages.Add(1)
	c.newMessageID()
	msg, err := readMessage(r, ss.srv.app.bodyMemory, ss.srv.app.SpoolDir)
	if err != nil {
		return ss.readFailed(err)
	}
	defer msg.Discard()
	if err := ss.checkBody(msg); err != nil {
		return err
	}
	release, err := ss.checkHeader(msg)
	if err != nil {
		return err
	}
	defer release()
	if err := ss.srv.hooks.runData(c, msg); errors.Is(err, ErrDiscard) {
		c.logMessage(msg, "discarded", nil)
		return &Error{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + c.MessageID()}
	} else if err != nil {
		return err
	}
	if len(msg.authResults) > 0 {
		msg.AddHeader("Authentication-Results", ss.srv.Hostname+";\r\n\t"+strings.Join(msg.authResults, ";\r\n\t"))
	}
	env := c.envelope()
	if err := ss.applySpamPolicy(msg, env); err != nil {
		return err
	}
	msg.AddHeader("Received", received(c, env))
	if err := ss.srv.app.router.deliver(c.ctx, env, msg, c.Logger()); err != nil {
		c.Logger().Error("delivery failed", zap.String("id", env.ID), zap.Error(err))
		c.logMessage(msg, "failed", err)
		// A bare 5xx *Error means every recipient was refused for good;
		// anything else (a 5xx wrapped in another failure included) is
		// temporary.
		if e, ok := err.(*Error); ok && e.Code/100 == 5 {
			return c.reply(e, false)
		}
		return c.reply(replyDeliveryFailed, false)
	}
	ss.srv.metrics.bytes.WithLabelValues(ss.srv.name).Add(float64(msg.Size()))
	c.logMessage(msg, "delivered", nil)
	return &Error{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + env.ID}
}

// readFailed turns a failure to read the body into the reply.
func (ss *session) readFailed(err error) error {
	c := ss.c
	switch {
	case errors.Is(err, smtp.ErrDataReset):
		return err // BDAT cut short by RSET: no reply is written for it
	case errors.Is(err, smtp.ErrDataTooLarge):
		return c.refuse(refusal{stage: "data", err: smtp.ErrDataTooLarge, label: "too_large", reason: "message too large", msg: &Message{}})
	case errors.Is(err, errBareLineEnd):
		return ss.refuseBody(replyBareLineEnd, "bare_line_end", "bare CR or LF in message")
	}
	c.Logger().Info("reading message failed", zap.Error(err))
	return c.reply(replyIncomplete, false)
}

// checkBody holds a body to what the wire saw of it: all of it arrived
// (nothing partial is ever stored), with CRLF line ends only, and no line
// over the limit.
func (ss *session) checkBody(msg *Message) error {
	body := ss.c.wire.body()
	switch {
	case !body.Complete:
		ss.c.Logger().Info("message incomplete, discarded")
		return ss.c.reply(replyIncomplete, false)
	case body.Bare:
		return ss.refuseBody(replyBareLineEnd, "bare_line_end", "bare CR or LF in message")
	case body.Long:
		return ss.refuseBody(replyLongBodyLine, "line_too_long", "message line over the limit")
	}
	return nil
}

func (ss *session) refuseBody(reply *Error, label, reason string) error {
	return ss.c.refuse(refusal{stage: "data", err: reply, label: label, reason: reason, event: EventProtocolError, msg: &Message{}})
}

// checkHeader reads the header section once, within the app's memory
// budget (held until the hooks are done: they parse it again): it counts
// the hops (a mail loop ends here, RFC 5321 6.3) and removes the fields
// this server is the authority for, so that only its own reach the
// mailbox.
func (ss *session) checkHeader(msg *Message) (release func(), err error) {
	c, srv := ss.c, ss.srv
	release, ok := srv.app.bodyMemory.reserveWait(c.ctx, msg.headerScanSize())
	if !ok {
		c.Logger().Warn("memory budget exhausted: message deferred")
		return nil, c.reply(replyBusy, false)
	}
	hops := 0
	forwarders, loop := c.forwardedFor(), ""
	err = msg.removeHeaderFields(func(name, value []byte) bool {
		if bytes.EqualFold(name, []byte("Received")) {
			hops++
			return false
		}
		if loop == "" && len(forwarders) > 0 && bytes.EqualFold(name, []byte("Delivered-To")) {
			loop = forwardLoop(forwarders, value)
		}
		return srv.foreignField(name, value)
	})
	switch {
	case errors.Is(err, errHeaderTooLarge):
		release()
		return nil, c.refuse(refusal{stage: "data", err: replyHeaderTooLarge, label: "header_too_large", reason: "header section too large", msg: msg})
	case err != nil:
		release()
		c.Logger().Error("reading the header section", zap.Error(err))
		return nil, c.reply(replyDeliveryFailed, false)
	case loop != "":
		release()
		return nil, c.refuse(refusal{stage: "data", err: replyForwardLoop, label: "forward_loop", reason: "forwarding loop",
			msg: msg, fields: []zap.Field{zap.String("delivered_to", loop)}})
	case hops > srv.limits.MaxHops:
		release()
		return nil, c.refuse(refusal{stage: "data", err: replyTooManyHops, label: "too_many_hops", reason: "mail loop",
			msg: msg, fields: []zap.Field{zap.Int("hops", hops)}})
	}
	return release, nil
}

// foreignField reports a header field that claims to come from this
// server but was made elsewhere.
func (s *Server) foreignField(name, value []byte) bool {
	switch {
	case bytes.EqualFold(name, []byte("Return-Path")), bytes.EqualFold(name, []byte("Delivered-To")):
		return true // the mailbox adds its own
	case bytes.EqualFold(name, []byte("Authentication-Results")):
		return s.app.isOwnName(authservID(string(value)))
	case bytes.EqualFold(name, []byte("Received-SPF")):
		return s.app.isOwnName(spfReceiver(string(value)))
	case len(name) > 7 && bytes.EqualFold(name[:7], []byte("X-Spam-")):
		return s.spamPolicyOn
	}
	return false
}

// applySpamPolicy compares the summed score with the thresholds.
func (ss *session) applySpamPolicy(msg *Message, env *Envelope) error {
	score := ss.c.Score()
	if len(score.Reasons) == 0 {
		return nil
	}
	tag, reject := ss.srv.tagScore, ss.srv.rejectScore
	reasons := score.reasonStrings()
	if score.Total >= reject {
		return ss.c.refuse(refusal{stage: "data", err: replySpam, label: "spam", reason: "spam score", msg: msg,
			fields: []zap.Field{zap.Float64("score", score.Total), zap.Strings("reasons", reasons)}})
	}
	if score.Total >= tag {
		env.Junk = true
	}
	msg.AddHeader("X-Spam-Score", formatScore(score.Total))
	msg.AddHeader("X-Spam-Status", spamStatus(score.Total, tag, reject, reasons))
	return nil
}

// received builds the Received field (RFC 5321 4.4, protocol per RFC 3848).
func received(c *Conn, env *Envelope) string {
	proto := "ESMTP"
	if env.UTF8 {
		proto = "UTF8SMTP" // RFC 6531 4.3
	}
	if c.TLS() != nil {
		proto += "S"
	}
	if env.Account != "" {
		proto += "A"
	}
	// One buffer, appended to: this runs for every message.
	b := make([]byte, 0, 200+len(env.Helo)+len(c.server.Hostname))
	if ValidHostname(env.Helo) {
		b = append(b, "from "...)
		b = append(b, env.Helo...)
		b = append(b, " (["...)
		b = env.ClientIP.AppendTo(b)
		b = append(b, "])"...)
	} else { // whatever the client said must not forge the trace
		b = append(b, "from ["...)
		b = env.ClientIP.AppendTo(b)
		b = append(b, "] (helo="...)
		b = append(b, commentSafe(env.Helo)...)
		b = append(b, ')')
	}
	b = append(b, "\r\n\tby "...)
	b = append(b, c.server.Hostname...)
	b = append(b, " (caddy-smtp) with "...)
	b = append(b, proto...)
	b = append(b, " id "...)
	b = append(b, env.ID...)
	if len(env.Recipients) == 1 {
		b = append(b, "\r\n\tfor <"...)
		b = append(b, env.Recipients[0].Address...)
		b = append(b, '>')
	}
	b = append(b, "; "...)
	b = env.Received.AppendFormat(b, time.RFC1123Z)
	return string(b)
}
