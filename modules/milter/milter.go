// Package milter is the smtp.handlers.milter module: a client of the
// Sendmail milter protocol (github.com/emersion/go-milter) for any milter
// (OpenDKIM, OpenDMARC, clamav-milter, rspamd's proxy worker).
package milter

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/outcome"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Milter{})
}

const moduleID = "smtp.handlers.milter"

// Defaults.
const (
	DefaultDialTimeout = 5 * time.Second
	DefaultTimeout     = 30 * time.Second
)

// Milter passes each SMTP session to a milter, stage by stage, as
// Postfix and Sendmail do: the connection (client address) when the
// client connects, HELO, MAIL FROM, each RCPT TO, then after DATA the
// header fields, the body and the end of the message. One milter
// connection serves a whole SMTP session (all its messages); several
// milters are several handlers, asked in config order, each with its own
// timeouts and failure policy.
//
// The milter's answers:
//
//   - continue: go on; accept: no more questions about this message (at
//     connect or HELO: about this session);
//   - reject: 550 5.7.1 (at connect 554 5.7.1, and the connection is
//     closed; at RCPT only that recipient is refused);
//   - tempfail: 451 4.7.1 (at connect 421 4.7.0);
//   - a reply of its own (smfi_setreply): sent as given, if its code is a
//     4xx or 5xx;
//   - discard: the message is accepted (250) and dropped unseen, as
//     Postfix's DISCARD (smtpapp.ErrDiscard); at connect or HELO, where
//     there is no message yet, the next MAIL is refused with 550 5.7.1;
//   - quarantine: QuarantineScore points added to the spam score, so the
//     message is tagged (filed as Junk) by the server's spam policy.
//
// At the end of the message the milter may add, insert, change and
// delete header fields: they are applied to the message's original header
// section, which is also what the milter was sent (the fields the server
// adds on top, such as Received, are not sent). It may also add and
// remove envelope recipients: an added one is routed as an RCPT would be
// (a local mailbox, or a remote one only where the client may relay); a
// message left with none is accepted and delivered to no one. Changing
// the sender or the body is not offered in the negotiation, so a milter
// that needs it declines to start or skips it.
//
// When the milter cannot be reached, times out or breaks the protocol,
// OnFailure applies for the rest of the session: "tempfail" (default,
// Postfix's milter_default_action) refuses MAIL, RCPT and DATA with 451
// 4.7.1; "reject" with 550 5.7.1; "accept" goes on without this milter.
// A failure is logged and counted in caddy_smtp_milter_failures_total.
type Milter struct {
	// Address of the milter: "inet:port@host", "inet6:port@host",
	// "unix:/path" (Postfix and Sendmail notation), "tcp://host:port", or
	// "host:port".
	Address string `json:"address"`
	// Name of the milter in logs and metrics. Default: the address.
	Name string `json:"name,omitempty"`
	// DialTimeout bounds connecting to the milter. Default: 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`
	// Timeout bounds each reply of the milter (and each write to it).
	// Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// OnFailure: "tempfail" (default), "reject" or "accept"; see above.
	OnFailure string `json:"on_failure,omitempty"`
	// QuarantineScore is the points added when the milter quarantines a
	// message. Default: the server's tag_score, so it is filed as Junk.
	QuarantineScore *float64 `json:"quarantine_score,omitempty"`

	network, addr string
	sessions      *sync.Map // *smtpapp.Conn -> *session
}

var (
	metricActions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_milter", Name: "actions_total",
		Help: "Milter answers by milter, stage and action (continue, accept, reject, tempfail, discard, reply, quarantine).",
	}, []string{"milter", "stage", "action"})
	metricFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_milter", Name: "failures_total",
		Help: "Milter failures (unreachable, timeout, protocol error) by milter, stage and the policy applied.",
	}, []string{"milter", "stage", "policy"})
	metricEdits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_milter", Name: "header_edits_total",
		Help: "Header modifications applied, by milter and kind (add, insert, change, delete, ignored).",
	}, []string{"milter", "kind"})
)

// CaddyModule returns the Caddy module information.
func (Milter) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: moduleID, New: func() caddy.Module { return new(Milter) }}
}

// Provision checks the config and sets the defaults.
func (m *Milter) Provision(ctx caddy.Context) error {
	if _, err := outcome.App(ctx, "milter", metricActions, metricFailures, metricEdits); err != nil {
		return err
	}
	m.sessions = new(sync.Map)
	var err error
	if m.network, m.addr, err = ParseAddress(m.Address); err != nil {
		return fmt.Errorf("address: %v", err)
	}
	if m.Name == "" {
		m.Name = m.Address
	}
	if m.DialTimeout < 0 {
		return fmt.Errorf("dial_timeout: must not be negative")
	}
	if m.DialTimeout == 0 {
		m.DialTimeout = caddy.Duration(DefaultDialTimeout)
	}
	if err := outcome.Timeout(&m.Timeout, DefaultTimeout); err != nil {
		return err
	}
	switch m.OnFailure {
	case "":
		m.OnFailure = "tempfail"
	case "tempfail", "reject", "accept":
	default:
		return fmt.Errorf("on_failure: %q is not tempfail, reject or accept", m.OnFailure)
	}
	return nil
}

var postfixAddr = regexp.MustCompile(`^(inet|inet6):([0-9]+)@(.+)$`)

// ParseAddress turns a milter address into a network and address for
// net.Dial.
func ParseAddress(a string) (network, addr string, err error) {
	switch {
	case a == "":
		return "", "", errors.New("missing")
	case strings.HasPrefix(a, "unix:"), strings.HasPrefix(a, "local:"):
		_, path, _ := strings.Cut(a, ":")
		if path == "" {
			return "", "", fmt.Errorf("%q: no path", a)
		}
		return "unix", path, nil
	case strings.HasPrefix(a, "tcp://"):
		a = strings.TrimPrefix(a, "tcp://")
	default:
		if m := postfixAddr.FindStringSubmatch(a); m != nil {
			a = net.JoinHostPort(strings.Trim(m[3], "[]"), m[2])
		}
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" {
		return "", "", fmt.Errorf("%q is not inet:port@host, unix:/path or host:port", a)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", "", fmt.Errorf("%q: bad port", a)
	}
	return "tcp", a, nil
}

// session is one SMTP session's milter connection.
type session struct {
	mu     sync.Mutex
	cs     *milter.ClientSession
	conn   net.Conn
	failed bool // the policy applies for the rest of the session
	done   bool // nothing more to ask (accepted, or failed with "accept")
	// Per message:
	inMsg   bool // MAIL was sent (an Abort is due before the next)
	msgDone bool // the milter accepted the message
	discard bool // the milter asked to discard the message
}

// recordingDialer keeps the connection, so a cancelled session context
// can close it.
type recordingDialer struct {
	d    net.Dialer
	conn net.Conn
}

func (r *recordingDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := r.d.Dial(network, addr)
	r.conn = c
	return c, err
}

func (m *Milter) log(c *smtpapp.Conn) *zap.Logger {
	return c.Logger().With(zap.String("module", moduleID), zap.String("milter", m.Name))
}

// call runs f with ctx's end closing the milter connection.
func (s *session) call(ctx context.Context, f func() error) error {
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()
	err := f()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", err, ctx.Err())
	}
	return err
}

// fail records a failure and returns the refusal the policy gives now
// (nil at connect and HELO: the refusal comes at MAIL).
func (m *Milter) fail(c *smtpapp.Conn, s *session, stage string, err error) error {
	metricFailures.WithLabelValues(m.Name, stage, m.OnFailure).Inc()
	m.log(c).Warn("milter failed", zap.String("stage", stage), zap.String("policy", m.OnFailure), zap.Error(err))
	if s.cs != nil {
		s.conn.Close()
		s.cs = nil
	}
	if m.OnFailure == "accept" {
		s.done = true
		return nil
	}
	s.failed = true
	if stage == "connect" || stage == "helo" {
		return nil
	}
	return m.policyRefusal()
}

func (m *Milter) policyRefusal() error {
	if m.OnFailure == "reject" {
		return smtpapp.Refuse(550, [3]int{5, 7, 1}, "milter_failure", "Command rejected")
	}
	return smtpapp.Refuse(451, [3]int{4, 7, 1}, "milter_failure", "Service unavailable, try again later")
}

// Connect opens the milter connection and tells it who connected.
func (m *Milter) Connect(ctx context.Context, c *smtpapp.Conn) error {
	s := &session{}
	m.sessions.Store(c, s)
	s.mu.Lock()
	defer s.mu.Unlock()
	dialer := &recordingDialer{d: net.Dialer{Timeout: time.Duration(m.DialTimeout)}}
	client := milter.NewClientWithOptions(m.network, m.addr, milter.ClientOptions{
		Dialer:      dialer,
		ReadTimeout: time.Duration(m.Timeout), WriteTimeout: time.Duration(m.Timeout),
		ActionMask: milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine | milter.OptAddRcpt | milter.OptRemoveRcpt,
	})
	cs, err := client.Session()
	if err != nil {
		if dialer.conn != nil {
			dialer.conn.Close()
		}
		return m.fail(c, s, "connect", err)
	}
	s.cs, s.conn = cs, dialer.conn
	ip := c.RemoteIP().Unmap()
	family := milter.FamilyInet
	if ip.Is6() {
		family = milter.FamilyInet6
	}
	err = s.call(ctx, func() error {
		if err := cs.Macros(milter.CodeConn, "j", c.Hostname(), "{daemon_name}", "caddy-smtp", "{client_addr}", ip.String()); err != nil {
			return err
		}
		act, err := cs.Conn("["+ip.String()+"]", family, c.RemoteAddr().Port(), ip.String())
		if err != nil {
			return err
		}
		return m.act(c, s, "connect", act)
	})
	return m.result(c, s, "connect", err)
}

// result turns a call's error into the hook's: refusals as they are,
// anything else a failure.
func (m *Milter) result(c *smtpapp.Conn, s *session, stage string, err error) error {
	var r *smtpapp.Refusal
	if err == nil || errors.As(err, &r) || errors.Is(err, smtpapp.ErrDiscard) {
		return err
	}
	return m.fail(c, s, stage, err)
}

// act applies a milter's answer at a stage.
func (m *Milter) act(c *smtpapp.Conn, s *session, stage string, a *milter.Action) error {
	name := actionName(a.Code)
	metricActions.WithLabelValues(m.Name, stage, name).Inc()
	if a.Code != milter.ActContinue {
		m.log(c).Info("milter answer", zap.String("stage", stage), zap.String("action", name),
			zap.Int("code", a.SMTPCode), zap.String("text", a.SMTPText))
	}
	connStage := stage == "connect" || stage == "helo"
	switch a.Code {
	case milter.ActContinue:
		return nil
	case milter.ActAccept:
		if connStage {
			s.done = true
		} else {
			s.msgDone = true
		}
		return nil
	case milter.ActReject:
		if stage == "connect" {
			return smtpapp.Refuse(554, [3]int{5, 7, 1}, "milter_reject", "Connection rejected")
		}
		return smtpapp.Refuse(550, [3]int{5, 7, 1}, "milter_reject", "Command rejected")
	case milter.ActTempFail:
		if stage == "connect" {
			return smtpapp.Refuse(421, [3]int{4, 7, 0}, "milter_tempfail", "Service unavailable, try again later")
		}
		return smtpapp.Refuse(451, [3]int{4, 7, 1}, "milter_tempfail", "Service unavailable, try again later")
	case milter.ActDiscard:
		switch stage {
		case "rcpt", "mail":
			s.discard = true // the whole message is discarded at DATA
			return nil
		case "data":
			return smtpapp.ErrDiscard
		}
		return smtpapp.Refuse(550, [3]int{5, 7, 1}, "milter_discard", "Message discarded by a content filter")
	case milter.ActReplyCode:
		return replyCode(a, stage)
	}
	return fmt.Errorf("unexpected milter action %q", a.Code)
}

var enhancedCode = regexp.MustCompile(`^([245])\.([0-9]{1,3})\.([0-9]{1,3}) +`)

// replyCode is a milter's own reply (smfi_setreply): "code x.y.z text".
func replyCode(a *milter.Action, stage string) error {
	code := a.SMTPCode
	if code < 400 || code > 599 {
		return fmt.Errorf("milter reply code %d is not a refusal", code)
	}
	text := printable(a.SMTPText, 200)
	enh := [3]int{code / 100, 7, 1}
	if m := enhancedCode.FindStringSubmatch(text); m != nil && m[1] == strconv.Itoa(code/100) {
		x, _ := strconv.Atoi(m[2])
		y, _ := strconv.Atoi(m[3])
		enh = [3]int{code / 100, x, y}
		text = text[len(m[0]):]
	}
	if text == "" {
		text = "Command rejected"
	}
	if code == 421 && stage != "connect" {
		code = 451 // a 421 would close the session: the milter refuses this command
		enh[0] = 4
	}
	label := "milter_reject"
	if code < 500 {
		label = "milter_tempfail"
	}
	return smtpapp.Refuse(code, enh, label, text)
}

func printable(s string, n int) string {
	b := make([]byte, 0, min(len(s), n))
	for i := 0; i < len(s) && len(b) < n; i++ {
		if ch := s[i]; ch >= 0x20 && ch < 0x7f {
			b = append(b, ch)
		} else {
			b = append(b, '?')
		}
	}
	return strings.TrimSpace(string(b))
}

func actionName(c milter.ActionCode) string {
	switch c {
	case milter.ActContinue:
		return "continue"
	case milter.ActAccept:
		return "accept"
	case milter.ActReject:
		return "reject"
	case milter.ActTempFail:
		return "tempfail"
	case milter.ActDiscard:
		return "discard"
	case milter.ActReplyCode:
		return "reply"
	case milter.ActSkip:
		return "skip"
	}
	return "unknown"
}

// state returns the session of c, locked, and whether the milter is to
// be asked; when it is not, refusal is the failure policy's answer.
func (m *Milter) state(c *smtpapp.Conn) (s *session, ask bool, refusal error) {
	v, ok := m.sessions.Load(c)
	if !ok {
		return nil, false, nil
	}
	s = v.(*session)
	s.mu.Lock()
	switch {
	case s.failed:
		return s, false, m.policyRefusal()
	case s.done || s.cs == nil:
		return s, false, nil
	}
	return s, true, nil
}

// Helo tells the milter the client's HELO name.
func (m *Milter) Helo(ctx context.Context, c *smtpapp.Conn, name string) error {
	s, ask, _ := m.state(c)
	if s == nil {
		return nil
	}
	defer s.mu.Unlock()
	if !ask {
		return nil // a failure's refusal comes at MAIL
	}
	err := s.call(ctx, func() error {
		act, err := s.cs.Helo(name)
		if err != nil {
			return err
		}
		return m.act(c, s, "helo", act)
	})
	return m.result(c, s, "helo", err)
}

// Mail starts a message for the milter (ending any earlier one left
// unfinished by RSET or a refusal).
func (m *Milter) Mail(ctx context.Context, c *smtpapp.Conn, from string) error {
	s, ask, refusal := m.state(c)
	if s == nil {
		return nil
	}
	defer s.mu.Unlock()
	if !ask {
		return refusal
	}
	s.msgDone, s.discard = false, false
	err := s.call(ctx, func() error {
		if s.inMsg {
			if err := s.cs.Abort(); err != nil {
				return err
			}
		}
		s.inMsg = true
		kv := []string{"{mail_addr}", from}
		if acct := c.Account(); acct != "" {
			kv = append(kv, "{auth_authen}", acct, "{auth_type}", c.AuthMechanism())
		}
		if err := s.cs.Macros(milter.CodeMail, kv...); err != nil {
			return err
		}
		act, err := s.cs.Mail("<"+from+">", nil)
		if err != nil {
			return err
		}
		return m.act(c, s, "mail", act)
	})
	return m.result(c, s, "mail", err)
}

// Rcpt tells the milter a recipient; a refusal refuses that recipient.
func (m *Milter) Rcpt(ctx context.Context, c *smtpapp.Conn, rcpt smtpapp.Recipient) error {
	s, ask, refusal := m.state(c)
	if s == nil {
		return nil
	}
	defer s.mu.Unlock()
	if !ask {
		return refusal
	}
	if s.msgDone || s.discard {
		return nil
	}
	err := s.call(ctx, func() error {
		if err := s.cs.Macros(milter.CodeRcpt, "{rcpt_addr}", rcpt.Address); err != nil {
			return err
		}
		act, err := s.cs.Rcpt("<"+rcpt.Address+">", nil)
		if err != nil {
			return err
		}
		return m.act(c, s, "rcpt", act)
	})
	return m.result(c, s, "rcpt", err)
}

// Data sends the header section and the body, then applies the milter's
// modifications and its verdict.
func (m *Milter) Data(ctx context.Context, c *smtpapp.Conn, msg *smtpapp.Message) error {
	s, ask, refusal := m.state(c)
	if s == nil {
		return nil
	}
	defer s.mu.Unlock()
	if !ask {
		return refusal
	}
	if s.discard {
		s.endMessage(ctx)
		metricActions.WithLabelValues(m.Name, "data", "discard").Inc()
		return smtpapp.ErrDiscard
	}
	if s.msgDone {
		s.endMessage(ctx)
		return nil
	}
	var mods []milter.ModifyAction
	err := s.call(ctx, func() error {
		s.inMsg = false // an answer other than continue ends the message for the milter
		fields, err := msg.HeaderFields()
		if err != nil {
			return errSkip{err}
		}
		if err := s.cs.Macros(milter.CodeEOH, "i", c.MessageID()); err != nil {
			return err
		}
		for _, f := range fields {
			act, err := s.cs.HeaderField(f.Name, strings.ReplaceAll(f.Value, "\r\n", "\n"))
			if err != nil {
				return err
			}
			if act.Code != milter.ActContinue {
				return m.act(c, s, "header", act)
			}
		}
		act, err := s.cs.HeaderEnd()
		if err != nil {
			return err
		}
		if act.Code != milter.ActContinue {
			return m.act(c, s, "header", act)
		}
		body, err := bodyOf(msg)
		if err != nil {
			return errSkip{err}
		}
		mods, act, err = s.cs.BodyReadFrom(body)
		if err != nil {
			return err
		}
		return m.act(c, s, "data", act)
	})
	var skip errSkip
	if errors.As(err, &skip) {
		// The message itself cannot be read: not the milter's fault.
		m.log(c).Error("milter: reading the message", zap.Error(skip.err))
		return smtpapp.Errorf(451, [3]int{4, 3, 0}, "Local error, try again later")
	}
	if err != nil {
		return m.result(c, s, "data", err)
	}
	m.apply(c, msg, mods)
	return nil
}

type errSkip struct{ err error }

func (e errSkip) Error() string { return e.err.Error() }

// endMessage tells the milter the message it accepted or discarded is
// over (an Abort: it gets no body).
func (s *session) endMessage(ctx context.Context) {
	if s.inMsg {
		s.inMsg = false
		_ = s.call(ctx, s.cs.Abort)
	}
}

// bodyOf is the message body after the header section.
func bodyOf(msg *smtpapp.Message) (io.Reader, error) {
	br := bufio.NewReaderSize(msg.Body(), 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err == io.EOF {
			return strings.NewReader(""), nil
		}
		if err == bufio.ErrBufferFull {
			for err == bufio.ErrBufferFull {
				_, err = br.ReadSlice('\n')
			}
			if err == io.EOF {
				return strings.NewReader(""), nil
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if string(line) == "\r\n" {
			return br, nil
		}
	}
}

// apply applies the milter's modifications at the end of the message.
func (m *Milter) apply(c *smtpapp.Conn, msg *smtpapp.Message, mods []milter.ModifyAction) {
	for _, mod := range mods {
		var err error
		kind := ""
		switch mod.Code {
		case milter.ActAddHeader:
			kind, err = "add", msg.AppendHeader(mod.HeaderName, mod.HeaderValue)
		case milter.ActInsertHeader:
			kind, err = "insert", msg.InsertHeader(int(mod.HeaderIndex), mod.HeaderName, mod.HeaderValue)
		case milter.ActChangeHeader:
			idx := int(mod.HeaderIndex)
			if idx == 0 {
				idx = 1
			}
			if mod.HeaderValue == "" {
				kind, err = "delete", msg.DeleteHeader(mod.HeaderName, idx)
				if errors.Is(err, smtpapp.ErrNoHeaderField) {
					err = nil
				}
			} else {
				kind, err = "change", msg.ChangeHeader(mod.HeaderName, idx, mod.HeaderValue)
				if errors.Is(err, smtpapp.ErrNoHeaderField) { // as libmilter: a missing field is added
					err = msg.AppendHeader(mod.HeaderName, mod.HeaderValue)
				}
			}
		case milter.ActAddRcpt:
			// Routed as an RCPT would be: a local mailbox, or a remote
			// one only where this client may relay.
			kind, err = "add_recipient", c.AddRecipient(strings.Trim(mod.Rcpt, "<>"))
		case milter.ActDelRcpt:
			kind = "delete_recipient"
			if !c.RemoveRecipient(strings.Trim(mod.Rcpt, "<>")) {
				err = fmt.Errorf("no such recipient %q", printable(mod.Rcpt, 80))
			}
		case milter.ActQuarantine:
			metricActions.WithLabelValues(m.Name, "data", "quarantine").Inc()
			reason := printable(mod.Reason, 100)
			m.log(c).Info("milter quarantined the message", zap.String("reason", reason))
			points, _ := c.SpamThresholds() // the tag score, unless set
			if m.QuarantineScore != nil {
				points = *m.QuarantineScore
			}
			c.AddScore("milter", points, "quarantined by milter "+m.Name+": "+reason)
			continue
		default:
			kind = "ignored"
			m.log(c).Warn("milter modification not supported, ignored", zap.String("code", string(rune(mod.Code))))
		}
		metricEdits.WithLabelValues(m.Name, kind).Inc()
		if err != nil {
			m.log(c).Warn("milter modification not applied", zap.String("kind", kind),
				zap.String("field", printable(mod.HeaderName, 80)), zap.Error(err))
		}
	}
}

// Close ends the milter connection with the SMTP session.
func (m *Milter) Close(c *smtpapp.Conn) {
	v, ok := m.sessions.LoadAndDelete(c)
	if !ok {
		return
	}
	s := v.(*session)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cs != nil {
		s.conn.SetDeadline(time.Now().Add(time.Second))
		_ = s.cs.Close() // aborts a message in progress, QUIT, closes
		s.cs = nil
	}
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	milter <address> {
//		name <name>
//		dial_timeout <duration>
//		timeout <duration>
//		on_failure tempfail|reject|accept
//		quarantine_score <points>
//	}
func (m *Milter) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := caddyargs.Header(d, &m.Address); err != nil {
		return err
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		var err error
		switch opt {
		case "address", "name", "on_failure":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			switch opt {
			case "address":
				m.Address = v
			case "name":
				m.Name = v
			default:
				if v != "tempfail" && v != "reject" && v != "accept" {
					return d.Errf("on_failure: %q is not tempfail, reject or accept", v)
				}
				m.OnFailure = v
			}
		case "dial_timeout":
			m.DialTimeout, err = caddyargs.Duration(d)
		case "timeout":
			m.Timeout, err = caddyargs.Duration(d)
		case "quarantine_score":
			var f float64
			f, err = caddyargs.Float(d)
			m.QuarantineScore = &f
		default:
			return d.Errf("unrecognized milter option %q", opt)
		}
		if err != nil {
			return err
		}
	}
	if m.Address == "" {
		return d.Err("milter: an address is required")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Milter)(nil)
	_ caddyfile.Unmarshaler = (*Milter)(nil)
	_ smtpapp.ConnectHook   = (*Milter)(nil)
	_ smtpapp.HeloHook      = (*Milter)(nil)
	_ smtpapp.MailHook      = (*Milter)(nil)
	_ smtpapp.RcptHook      = (*Milter)(nil)
	_ smtpapp.DataHook      = (*Milter)(nil)
	_ smtpapp.CloseHook     = (*Milter)(nil)
)
