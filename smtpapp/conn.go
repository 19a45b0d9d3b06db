package smtpapp

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Conn is the state of one client connection, shared by every hook. It
// lives as long as the connection; STARTTLS clears what the client said
// before it (RFC 3207 4.2).
type Conn struct {
	// ID identifies the connection in logs and in the Received header.
	ID string

	server  *Server
	ctx     context.Context
	cancel  context.CancelFunc
	start   time.Time
	remote  netip.AddrPort
	local   netip.AddrPort
	logger  *zap.Logger // made on first use: an idle connection never logs
	logOnce sync.Once
	wire    *wire

	mu           sync.Mutex
	connected    bool // the connect stage is over
	helo         string
	tlsState     *tls.ConnectionState
	account      string
	errors       int
	connectScore Score // points for the client's address (RBL), given at connect
	sessionScore Score // points for what it said before MAIL (HELO)
	msgScore     Score // points for the current message
	values       map[string]any
	lateKeys     map[string]bool // values set after the connect stage
	from         string
	rcpts        []Recipient
	inMail       bool
	authFails    int
	spf          *SPFResult // the transaction's SPF result (spf handler)
	msgID        string     // the current message's ID, from DATA on
	authMech     string     // the SASL mechanism of the last AUTH
	requireTLS   bool       // the transaction's MAIL carried REQUIRETLS
	smtputf8     bool       // the transaction's MAIL carried SMTPUTF8

	closeOnce   sync.Once
	releaseOnce sync.Once
}

// ScoreReason is one contribution to a spam score.
type ScoreReason struct {
	Module string  `json:"module"`
	Points float64 `json:"points"`
	Reason string  `json:"reason"`
}

// Score is a spam score with its reasons.
type Score struct {
	Total   float64
	Reasons []ScoreReason
}

func (s *Score) add(r ScoreReason) {
	s.Total += r.Points
	s.Reasons = append(s.Reasons, r)
}

var idEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

func newID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// Context is cancelled when the connection ends or its time is up.
func (c *Conn) Context() context.Context { return c.ctx }

type connCtxKey struct{}

// ConnFrom returns the connection whose context ctx is or derives from
// (the context that hooks and the accounts provider get), or nil. An
// accounts provider that passes the client's address on (to Dovecot)
// finds it this way.
func ConnFrom(ctx context.Context) *Conn {
	c, _ := ctx.Value(connCtxKey{}).(*Conn)
	return c
}

// RemoteIP is the client's address (IPv4-mapped IPv6 addresses unmapped).
func (c *Conn) RemoteIP() netip.Addr { return c.remote.Addr() }

// RemoteAddr is the client's address and port.
func (c *Conn) RemoteAddr() netip.AddrPort { return c.remote }

// LocalAddr is the server address the client connected to.
func (c *Conn) LocalAddr() netip.AddrPort { return c.local }

// ServerName is the name of the server (in the app's config) that accepted the connection.
func (c *Conn) ServerName() string { return c.server.name }

// Hostname is the server's own hostname, as in its greeting.
func (c *Conn) Hostname() string { return c.server.Hostname }

// Logger logs with the connection's fields.
func (c *Conn) Logger() *zap.Logger {
	c.logOnce.Do(func() {
		c.logger = c.server.logger.With(zap.String("conn", c.ID), zap.String("remote", c.remote.String()))
	})
	return c.logger
}

// Trusted reports whether the client is in the server's trusted_networks
// (a relay of ours: checks of the client IP should not apply).
func (c *Conn) Trusted() bool { return c.server.trustedIP(c.remote.Addr()) }

// Deadline is when the session limit ends the connection.
func (c *Conn) Deadline() time.Time { return c.wire.deadline }

// Helo is the name the client gave in HELO/EHLO.
func (c *Conn) Helo() string { c.mu.Lock(); defer c.mu.Unlock(); return c.helo }

// TLS returns the TLS state, or nil for a plaintext connection.
func (c *Conn) TLS() *tls.ConnectionState { c.mu.Lock(); defer c.mu.Unlock(); return c.tlsState }

// Account is the authenticated account, or "".
func (c *Conn) Account() string { c.mu.Lock(); defer c.mu.Unlock(); return c.account }

// Errors counts the errors (refused commands) of this connection so far.
func (c *Conn) Errors() int { c.mu.Lock(); defer c.mu.Unlock(); return c.errors }

// From is the current transaction's reverse path ("" for the null sender).
func (c *Conn) From() string { c.mu.Lock(); defer c.mu.Unlock(); return c.from }

// Recipients are the current transaction's accepted recipients.
func (c *Conn) Recipients() []Recipient {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Recipient(nil), c.rcpts...)
}

// AddScore adds points (negative for good signs) to the spam score: to
// the connection's before MAIL, to the current message's after it.
func (c *Conn) AddScore(module string, points float64, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := ScoreReason{Module: module, Points: points, Reason: reason}
	switch {
	case c.inMail:
		c.msgScore.add(r)
	case !c.connected:
		c.connectScore.add(r)
	default:
		c.sessionScore.add(r)
	}
}

// Score is the total spam score: the connection's and the current message's.
func (c *Conn) Score() Score {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s Score
	for _, part := range []*Score{&c.connectScore, &c.sessionScore, &c.msgScore} {
		s.Total += part.Total
		s.Reasons = append(s.Reasons, part.Reasons...)
	}
	return s
}

// Set stores a module's per-connection value. A value first set after
// the connect stage is about what the client said, and STARTTLS drops it.
func (c *Conn) Set(key string, v any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.values == nil {
		c.values = make(map[string]any)
	}
	if _, ok := c.values[key]; !ok && c.connected {
		if c.lateKeys == nil {
			c.lateKeys = make(map[string]bool)
		}
		c.lateKeys[key] = true
	}
	c.values[key] = v
}

// Get returns a value stored with Set.
func (c *Conn) Get(key string) any { c.mu.Lock(); defer c.mu.Unlock(); return c.values[key] }

// Emit tells the event hooks about ev.
func (c *Conn) Emit(ev Event) {
	c.server.metrics.event(c.server.name, ev)
	for _, h := range c.server.hooks.events {
		h.Event(c, ev)
	}
}

func (c *Conn) countError() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errors++
	return c.errors
}

func (c *Conn) countAuthFailure() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.authFails++
	return c.authFails
}

// connectDone ends the connect stage: points given from now on are for
// what the client says.
func (c *Conn) connectDone() { c.mu.Lock(); c.connected = true; c.mu.Unlock() }

func (c *Conn) setHelo(name string) { c.mu.Lock(); c.helo = name; c.mu.Unlock() }

func (c *Conn) setTLS(st *tls.ConnectionState) { c.mu.Lock(); c.tlsState = st; c.mu.Unlock() }

func (c *Conn) setAccount(a string) { c.mu.Lock(); c.account = a; c.mu.Unlock() }

func (c *Conn) setAuthMechanism(m string) { c.mu.Lock(); c.authMech = m; c.mu.Unlock() }

// AuthMechanism is the SASL mechanism the client logged in with (PLAIN,
// LOGIN), or "" before a successful AUTH.
func (c *Conn) AuthMechanism() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.account == "" {
		return ""
	}
	return c.authMech
}

func (c *Conn) newMessageID() { c.mu.Lock(); c.msgID = newID(); c.mu.Unlock() }

// MessageID is the ID of the message being received (from DATA or the
// first BDAT on): the one in logs, the Received field and the file
// names, also known to the Data hooks (e.g. rspamd's Queue-Id).
func (c *Conn) MessageID() string { c.mu.Lock(); defer c.mu.Unlock(); return c.msgID }

// SpamThresholds are the server's tag and reject scores, for modules
// whose own points should follow them.
func (c *Conn) SpamThresholds() (tag, reject float64) { return c.server.tagScore, c.server.rejectScore }

func (c *Conn) inTransaction() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.inMail }

func (c *Conn) startTransaction(from string, requireTLS, smtputf8 bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.from, c.inMail, c.requireTLS, c.smtputf8 = from, true, requireTLS, smtputf8
}

// UTF8 reports whether the current transaction's MAIL carried SMTPUTF8
// (RFC 6531): its addresses may hold UTF-8 (see ParseAddressUTF8).
func (c *Conn) UTF8() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.smtputf8 }

func (c *Conn) resetTransaction() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.from = ""
	c.rcpts = nil
	c.msgScore = Score{}
	c.inMail = false
	c.spf = nil
	c.requireTLS = false
	c.smtputf8 = false
}

// resetForTLS forgets what the client said before STARTTLS (RFC 3207
// 4.2): its greeting, login, transaction, the points and module values
// that came from them. What the connect stage learnt of its address stays.
func (c *Conn) resetForTLS() {
	c.resetTransaction()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.helo, c.account = "", ""
	c.sessionScore = Score{}
	for k := range c.lateKeys {
		delete(c.values, k)
	}
	c.lateKeys = nil
}

// envelope is the current transaction, for the delivery targets.
func (c *Conn) envelope() *Envelope {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.msgID == "" {
		c.msgID = newID()
	}
	return &Envelope{
		ID:         c.msgID,
		From:       c.from,
		Recipients: append([]Recipient(nil), c.rcpts...),
		ClientIP:   c.remote.Addr(),
		Helo:       c.helo,
		Account:    c.account,
		Received:   time.Now(),
		RequireTLS: c.requireTLS,
		UTF8:       c.smtputf8,
	}
}

// logMessage logs one line per message and counts it by result.
func (c *Conn) logMessage(msg *Message, result string, err error) {
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
	c.Logger().Info("message", fields...)
	c.server.metrics.messages.WithLabelValues(c.server.name, result).Inc()
}

// finish runs the close hooks once and frees the connection's slot.
func (c *Conn) finish() {
	c.closeOnce.Do(func() {
		c.cancel()
		for _, h := range c.server.hooks.closes {
			h.Close(c)
		}
		c.releaseSlot()
		c.server.sessions.remove(c)
		c.server.metrics.connections.WithLabelValues(c.server.name).Dec()
		c.Logger().Debug("connection closed", zap.Duration("duration", time.Since(c.start)))
	})
}

// releaseSlot frees the connection's place under the ceilings: when the
// reply that ends the session is written (a client that reconnects at
// once must not find its own old connection in the way), or at the end.
func (c *Conn) releaseSlot() {
	c.releaseOnce.Do(func() { c.server.ceiling.release(c.remote.Addr()) })
}

func (c *Conn) String() string { return fmt.Sprintf("%s[%s]", c.ID, c.remote) }

// normalizeDomain lower-cases a domain (ASCII only: strings.ToLower
// would turn the Kelvin sign into a "k" and let a non-ASCII name pass as
// a valid one) and drops a trailing dot.
func normalizeDomain(d string) string {
	d = strings.TrimSuffix(d, ".")
	for i := 0; i < len(d); i++ {
		if 'A' <= d[i] && d[i] <= 'Z' { // most are lower case already: no copy
			b := []byte(d)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return d
}

// Pause waits d before the greeting (call it from a ConnectHook) and
// reports whether the client sent anything meanwhile: an early talker,
// which an honest SMTP client never is (RFC 5321 4.3.1; Postfix's
// postscreen "pregreet test"). On implicit-TLS connections, where the
// client speaks first, it only waits. It returns ctx's error if ctx ends.
func (c *Conn) Pause(ctx context.Context, d time.Duration) (earlyTalker bool, err error) {
	if d <= 0 {
		return false, nil
	}
	if c.wire.implicitTLS {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return false, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	// Read with a deadline: data before it ends is an early talker. The
	// bytes read are dropped, which is fine: such a client is refused.
	stop := context.AfterFunc(ctx, func() { c.wire.raw.SetReadDeadline(time.Now()) })
	defer stop()
	c.wire.raw.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	n, rerr := c.wire.raw.Read(b[:])
	c.wire.raw.SetReadDeadline(time.Time{})
	if n > 0 {
		return true, nil
	}
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if ne, ok := rerr.(net.Error); ok && ne.Timeout() {
		return false, nil
	}
	return false, rerr
}

// route decides where a recipient goes: a local mailbox, the outbound
// target (for authenticated users and trusted networks), or nowhere.
// A local address that forwards becomes its targets (remote ones go to
// the outbound target whoever the client is); a local address in SRS
// form that verifies becomes the original sender.
func (c *Conn) route(addr Address) ([]Recipient, error) {
	app := c.server.app
	if app.IsLocalDomain(addr.Domain) {
		if IsSRS(addr.Local) {
			r, err := c.routeSRS(addr)
			if err != nil {
				return nil, err
			}
			return []Recipient{r}, nil
		}
		if rcpts, ok, err := c.routeForward(addr); ok {
			return rcpts, err
		}
		mb, err := app.LookupMailbox(c.ctx, addr)
		switch {
		case err == nil:
			return []Recipient{{Address: addr.String(), Mailbox: mb}}, nil
		case errors.Is(err, ErrNoSuchUser):
			return nil, c.refuse(refusal{stage: "rcpt", err: replyNoSuchUser, label: "no_such_user", reason: "no such mailbox",
				event: EventUnknownRecipient, detail: addr.String(), fields: []zap.Field{zap.String("to", addr.String())}})
		default:
			c.Logger().Error("recipient lookup failed", zap.String("to", addr.String()), zap.Error(err))
			return nil, c.reply(replyTempLookup, false)
		}
	}
	if c.Account() == "" && !c.Trusted() || app.outbound == nil {
		return nil, c.refuse(refusal{stage: "rcpt", err: replyRelayDenied, label: "relay_denied", reason: "relay denied",
			event: EventRelayDenied, detail: addr.String(), fields: []zap.Field{zap.String("to", addr.String())}})
	}
	return []Recipient{{Address: addr.String()}}, nil
}

// AddRecipient adds a recipient to the current transaction, routed as
// one given with RCPT TO (a local mailbox, or a remote one where this
// client may relay): for a Data hook whose filter adds recipients (a
// milter's add-recipient). An address that RCPT would refuse is refused.
func (c *Conn) AddRecipient(address string) error {
	addr, err := parseAddress(address, c.UTF8())
	if err != nil {
		return err
	}
	rs, err := c.route(addr)
	if err != nil {
		return err
	}
	c.addRecipients(rs)
	return nil
}

// RemoveRecipient drops a recipient from the current transaction (a
// filter's decision after DATA); it reports whether it was there. A
// message left with no recipient is accepted and delivered to no one.
func (c *Conn) RemoveRecipient(address string) bool {
	addr, err := parseAddress(address, c.UTF8())
	if err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, r := range c.rcpts {
		if strings.EqualFold(r.Address, addr.String()) {
			c.rcpts = append(c.rcpts[:i], c.rcpts[i+1:]...)
			return true
		}
	}
	return false
}
