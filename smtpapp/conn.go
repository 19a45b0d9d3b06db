package smtpapp

import (
	"bytes"
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
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Conn is the state of one client connection, shared by every hook. It
// outlives STARTTLS (which starts a new go-smtp session on the same Conn).
type Conn struct {
	// ID identifies the connection in logs and in the Received header.
	ID string

	server *Server
	ctx    context.Context
	cancel context.CancelFunc
	start  time.Time
	remote netip.AddrPort
	local  netip.AddrPort
	logger *zap.Logger
	net    *netConn

	mu        sync.Mutex
	helo      string
	tlsState  *tls.ConnectionState
	account   string
	errors    int
	connScore Score // points given for the connection (RBL, HELO)
	msgScore  Score // points given for the current message
	values    map[string]any
	from      string
	rcpts     []Recipient
	inMail    bool
	authFails int
	spf       *SPFResult // the transaction's SPF result (spf handler)

	ownReplies     atomic.Int32 // our error replies not yet written
	replyLineStart bool         // observeReplies is at the start of a line
	closeOnce      sync.Once
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
func (c *Conn) Logger() *zap.Logger { return c.logger }

// Trusted reports whether the client is in the server's trusted_networks
// (a relay of ours: checks of the client IP should not apply).
func (c *Conn) Trusted() bool { return c.server.trustedIP(c.remote.Addr()) }

// Deadline is when the session limit ends the connection.
func (c *Conn) Deadline() time.Time { return c.net.deadline }

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

// AddScore adds points (negative for good signs) to the spam score: to the
// connection's before MAIL, to the current message's after it.
func (c *Conn) AddScore(module string, points float64, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := ScoreReason{Module: module, Points: points, Reason: reason}
	if !c.inMail {
		c.connScore.add(r)
	} else {
		c.msgScore.add(r)
	}
}

// Score is the total spam score: the connection's and the current message's.
func (c *Conn) Score() Score {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Score{Total: c.connScore.Total + c.msgScore.Total}
	s.Reasons = append(append(s.Reasons, c.connScore.Reasons...), c.msgScore.Reasons...)
	return s
}

// Set stores a module's per-connection value.
func (c *Conn) Set(key string, v any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.values == nil {
		c.values = make(map[string]any)
	}
	c.values[key] = v
}

// Get returns a value stored with Set.
func (c *Conn) Get(key string) any { c.mu.Lock(); defer c.mu.Unlock(); return c.values[key] }

// Emit tells the event hooks about ev.
func (c *Conn) Emit(ev Event) {
	c.server.metrics.event(c.server.name, ev)
	for _, h := range c.server.eventHooks {
		h.Event(c, ev)
	}
}

// own marks err as one of our replies (an error the session returns to
// go-smtp, which writes it): observeReplies then does not count it again.
func (c *Conn) own(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) && e.Code < 400 {
		return err
	}
	c.ownReplies.Add(1)
	return err
}

// observeReplies looks at the replies written to the client (where they
// are plaintext to us): a 4xx or 5xx that is not ours comes from go-smtp
// itself (unknown command, bad syntax, wrong sequence). It counts as an
// error of the session and is reported as a protocol error to the event
// hooks, before the reply is sent (so a tarpit can delay it).
func (c *Conn) observeReplies(b []byte) {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i+1], b[i+1:]
		} else {
			b = nil
		}
		if c.replyLineStart && len(line) >= 4 && (line[0] == '4' || line[0] == '5') && line[3] == ' ' {
			if c.ownReplies.Load() > 0 {
				c.ownReplies.Add(-1)
			} else if !c.net.closing.Load() {
				code := string(line[:3])
				c.logger.Debug("protocol error", zap.String("reply", string(bytes.TrimRight(line, "\r\n"))))
				c.Emit(Event{Kind: EventProtocolError, Detail: "bad command (" + code + ")"})
				if n := c.countError(); n >= c.server.Limits.withDefaults().MaxErrors {
					c.logger.Info("closing: too many errors", zap.Int("errors", n))
					c.closeAfterReply()
				}
			}
		}
		c.replyLineStart = line[len(line)-1] == '\n'
	}
}

// closeAfterReply makes the connection end after the pending reply.
func (c *Conn) closeAfterReply() { c.net.closing.Store(true) }

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

func (c *Conn) resetTransaction() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.from = ""
	c.rcpts = nil
	c.msgScore = Score{}
	c.inMail = false
	c.spf = nil
}

// finish runs the close hooks once.
func (c *Conn) finish() {
	c.closeOnce.Do(func() {
		c.cancel()
		for _, h := range c.server.closeHooks {
			h.Close(c)
		}
		c.server.metrics.connections.WithLabelValues(c.server.name).Dec()
		c.logger.Debug("connection closed", zap.Duration("duration", time.Since(c.start)))
	})
}

func (c *Conn) String() string { return fmt.Sprintf("%s[%s]", c.ID, c.remote) }

// normalizeDomain lower-cases a domain and drops a trailing dot.
func normalizeDomain(d string) string { return strings.TrimSuffix(strings.ToLower(d), ".") }

// Pause waits d before the greeting (call it from a ConnectHook) and
// reports whether the client sent anything meanwhile: an early talker,
// which an honest SMTP client never is (RFC 5321 4.3.1; Postfix's
// postscreen "pregreet test"). On implicit-TLS connections, where the
// client speaks first, it only waits. It returns ctx's error if ctx ends.
func (c *Conn) Pause(ctx context.Context, d time.Duration) (earlyTalker bool, err error) {
	if d <= 0 {
		return false, nil
	}
	if c.TLS() != nil || !c.net.inspect {
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
	stop := context.AfterFunc(ctx, func() { c.net.Conn.SetReadDeadline(time.Now()) })
	defer stop()
	c.net.Conn.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	n, rerr := c.net.Conn.Read(b[:])
	c.net.Conn.SetReadDeadline(time.Time{})
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
