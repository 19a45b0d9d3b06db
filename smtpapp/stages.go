package smtpapp

import (
	"errors"
	"strconv"

	"go.uber.org/zap"
)

// hooks are a server's handlers sorted by stage once, when the server is
// provisioned (as caddyhttp compiles a route's middleware chain), so no
// command type-asserts its handlers again.
type hooks struct {
	connect []hook[ConnectHook]
	helo    []hook[HeloHook]
	auth    []hook[AuthHook]
	mail    []hook[MailHook]
	rcpt    []hook[RcptHook]
	data    []hook[DataHook]
	events  []EventHook
	closes  []CloseHook
}

// hook is one handler's hook for a stage, with the module ID for logs
// and metrics.
type hook[H any] struct {
	module string
	h      H
}

func compileHooks(mods []any, ids []string) hooks {
	return hooks{
		connect: stage[ConnectHook](mods, ids),
		helo:    stage[HeloHook](mods, ids),
		auth:    stage[AuthHook](mods, ids),
		mail:    stage[MailHook](mods, ids),
		rcpt:    stage[RcptHook](mods, ids),
		data:    stage[DataHook](mods, ids),
		events:  only[EventHook](mods),
		closes:  only[CloseHook](mods),
	}
}

func stage[H any](mods []any, ids []string) []hook[H] {
	var out []hook[H]
	for i, m := range mods {
		if h, ok := m.(H); ok {
			out = append(out, hook[H]{module: ids[i], h: h})
		}
	}
	return out
}

func only[H any](mods []any) []H {
	var out []H
	for _, m := range mods {
		if h, ok := m.(H); ok {
			out = append(out, h)
		}
	}
	return out
}

// run calls a stage's hooks in config order; the first refusal goes
// through Conn.refuse and becomes the reply.
func run[H any](c *Conn, stage string, hs []hook[H], msg *Message, call func(H) error) error {
	for _, h := range hs {
		if err := call(h.h); err != nil {
			if errors.Is(err, ErrDiscard) {
				c.Logger().Info("discarded", zap.String("stage", stage), zap.String("module", h.module))
				return err
			}
			return c.refuse(refusal{stage: stage, module: h.module, err: err, msg: msg})
		}
	}
	return nil
}

func (hs *hooks) runConnect(c *Conn) error {
	return run(c, "connect", hs.connect, nil, func(h ConnectHook) error { return h.Connect(c.ctx, c) })
}

func (hs *hooks) runHelo(c *Conn, name string) error {
	return run(c, "helo", hs.helo, nil, func(h HeloHook) error { return h.Helo(c.ctx, c, name) })
}

func (hs *hooks) runAuth(c *Conn, user string) error {
	return run(c, "auth", hs.auth, nil, func(h AuthHook) error { return h.Auth(c.ctx, c, user) })
}

func (hs *hooks) runMail(c *Conn, from string) error {
	return run(c, "mail", hs.mail, nil, func(h MailHook) error { return h.Mail(c.ctx, c, from) })
}

func (hs *hooks) runRcpt(c *Conn, r Recipient) error {
	return run(c, "rcpt", hs.rcpt, nil, func(h RcptHook) error { return h.Rcpt(c.ctx, c, r) })
}

func (hs *hooks) runData(c *Conn, msg *Message) error {
	return run(c, "data", hs.data, msg, func(h DataHook) error { return h.Data(c.ctx, c, msg) })
}

// refusal is one refused command, client or message.
type refusal struct {
	stage  string
	module string // the hook's module, "" for the server's own checks
	err    error  // the reply (an *Error inside)
	label  string // metric reason; default: the Refusal's label or the code
	reason string // log reason; default: the reply's text
	event  EventKind
	detail string   // the event's detail; default: reason
	msg    *Message // also log the message line (after DATA)
	fields []zap.Field
}

// refuse is the one way a command is refused: it logs why, counts the
// metric, tells the event hooks, logs the message if there is one, and
// returns the reply for go-smtp (counted as the client's error).
func (c *Conn) refuse(r refusal) error {
	reply := replyOf(r.err)
	if r.reason == "" {
		r.reason = reply.Message
	}
	if r.label == "" {
		r.label = refusalLabel(r.err)
	}
	fields := append([]zap.Field{zap.String("stage", r.stage), zap.String("module", r.module), zap.String("reason", r.reason)}, r.fields...)
	c.Logger().Info("refused", fields...)
	c.server.metrics.refused(c.server.name, r.stage, r.module, r.label)
	if r.event == "" && r.module != "" {
		r.event = EventRefused
	}
	if r.event != "" {
		if r.detail == "" {
			r.detail = r.reason
		}
		c.Emit(Event{Kind: r.event, Module: r.module, Detail: r.detail})
	}
	if r.msg != nil {
		c.logMessage(r.msg, "rejected", reply)
	}
	return c.reply(reply, true)
}

// reply marks err as the session's reply to the command in flight, and
// whether it counts toward max_errors (a local failure does not).
func (c *Conn) reply(e *Error, counted bool) *Error {
	if c.wire != nil && e.Code >= 400 {
		mark := int32(replyUncounted)
		if counted {
			mark = replyCounted
		}
		c.wire.sessionReply.Store(mark)
	}
	return e
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
