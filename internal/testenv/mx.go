package testenv

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// MX is a real SMTP server (go-smtp) on a loopback address, standing in for
// a remote domain's mail server. It records every message it accepts and
// answers RCPT per recipient as the test scripts it.
type MX struct {
	Addr string // ip:port
	Host string // the name in its greeting

	t   testing.TB
	srv *smtp.Server
	ln  net.Listener

	mu         sync.Mutex
	msgs       []MXMessage
	rcptScript map[string][]*smtp.SMTPError
	dataReply  func(from string, to []string) *smtp.SMTPError
	delay      time.Duration
	changed    chan struct{}

	Sessions  atomic.Int64 // connections that said EHLO/HELO
	active    atomic.Int64
	maxActive atomic.Int64
}

// MXMessage is one accepted transaction.
type MXMessage struct {
	From string
	To   []string
	Data []byte
	TLS  bool
	Helo string
	// RequireTLS: MAIL FROM carried REQUIRETLS (RFC 8689).
	RequireTLS bool
	AuthUser   string
	At         time.Time
}

// MXOptions configure a test MX.
type MXOptions struct {
	// Host is the name in the greeting. Default: mx.<ip>.test.
	Host string
	// TLS offers STARTTLS with this config.
	TLS *tls.Config
	// AuthUser and AuthPass make the server offer AUTH PLAIN and LOGIN and
	// require it before MAIL.
	AuthUser, AuthPass string
	// ImplicitTLS makes the listener speak TLS from the first byte (needs TLS).
	ImplicitTLS bool
	// RequireTLS offers REQUIRETLS (RFC 8689) after STARTTLS.
	RequireTLS bool
}

// StartMX starts a test MX listening on addr (ip:port; port 0 picks one).
// It stops when the test ends.
func StartMX(t testing.TB, addr string, opts MXOptions) *MX {
	t.Helper()
	m, err := startMX(t, addr, opts)
	if err != nil {
		t.Fatalf("test MX on %s: %v", addr, err)
	}
	return m
}

// StartMXs starts one MX on each IP, all on the same port (as remote MX
// hosts are all on port 25), and returns them and the port.
func StartMXs(t testing.TB, ips []string, opts MXOptions) ([]*MX, int) {
	t.Helper()
	for try := 0; try < 20; try++ {
		first, err := startMX(t, net.JoinHostPort(ips[0], "0"), opts)
		if err != nil {
			t.Fatalf("test MX on %s: %v", ips[0], err)
		}
		port := first.ln.Addr().(*net.TCPAddr).Port
		out := []*MX{first}
		for _, ip := range ips[1:] {
			m, err := startMX(t, net.JoinHostPort(ip, fmt.Sprint(port)), opts)
			if err != nil {
				break
			}
			out = append(out, m)
		}
		if len(out) == len(ips) {
			return out, port
		}
		for _, m := range out {
			m.Close()
		}
	}
	t.Fatalf("could not find a port free on all of %v", ips)
	return nil, 0
}

func startMX(t testing.TB, addr string, opts MXOptions) (*MX, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if opts.ImplicitTLS {
		ln = tls.NewListener(ln, opts.TLS)
	}
	m := &MX{
		t:          t,
		ln:         ln,
		Addr:       ln.Addr().String(),
		rcptScript: map[string][]*smtp.SMTPError{},
		changed:    make(chan struct{}),
	}
	m.Host = opts.Host
	if m.Host == "" {
		host, _, _ := net.SplitHostPort(m.Addr)
		m.Host = "mx." + host + ".test"
	}
	s := smtp.NewServer(&mxBackend{m: m, opts: opts})
	s.Domain = m.Host
	s.ReadTimeout = 30 * time.Second
	s.WriteTimeout = 30 * time.Second
	s.MaxMessageBytes = 32 << 20
	s.MaxRecipients = 1000
	s.ErrorLog = nopLogger{}
	s.EnableREQUIRETLS = opts.RequireTLS
	if !opts.ImplicitTLS {
		s.TLSConfig = opts.TLS
	}
	m.srv = s
	go s.Serve(ln)
	t.Cleanup(m.Close)
	return m, nil
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

// Close stops the server (connections are refused from then on).
func (m *MX) Close() {
	m.ln.Close() // Serve may not have registered it yet
	m.srv.Close()
}

// RcptReplies scripts the replies to RCPT TO for addr: each RCPT for it
// takes the next reply; once they are used up it is accepted. A nil entry
// accepts.
func (m *MX) RcptReplies(addr string, replies ...*smtp.SMTPError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rcptScript[strings.ToLower(addr)] = append(m.rcptScript[strings.ToLower(addr)], replies...)
}

// DataReply sets a function that may refuse a message after its data.
func (m *MX) DataReply(f func(from string, to []string) *smtp.SMTPError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dataReply = f
}

// Delay makes the server wait this long before answering the end of data.
func (m *MX) Delay(d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.delay = d
}

// Messages returns the accepted transactions so far.
func (m *MX) Messages() []MXMessage {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]MXMessage(nil), m.msgs...)
}

// Count returns how many messages were accepted for each recipient.
func (m *MX) Count() map[string]int {
	out := map[string]int{}
	for _, msg := range m.Messages() {
		for _, to := range msg.To {
			out[strings.ToLower(to)]++
		}
	}
	return out
}

// WaitMessages waits until at least n transactions were accepted.
func (m *MX) WaitMessages(n int, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		got, ch := len(m.msgs), m.changed
		m.mu.Unlock()
		if got >= n {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

// MaxConcurrent is the largest number of transactions (MAIL to the end of
// DATA) in progress at once so far. Transactions, not connections: the
// client's slot is free once it has the reply to DATA, while the server
// may not have seen its connection close yet.
func (m *MX) MaxConcurrent() int { return int(m.maxActive.Load()) }

type mxBackend struct {
	m    *MX
	opts MXOptions
}

func (b *mxBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	m := b.m
	m.Sessions.Add(1)
	_, isTLS := c.TLSConnectionState()
	return &mxSession{m: m, opts: b.opts, tls: isTLS, helo: c.Hostname()}, nil
}

type mxSession struct {
	m        *MX
	opts     MXOptions
	tls      bool
	helo     string
	authUser string
	from     string
	to       []string
	inTx     bool
	// requireTLS: the current MAIL FROM carried REQUIRETLS.
	requireTLS bool
}

func (s *mxSession) beginTx() {
	if s.inTx {
		return
	}
	s.inTx = true
	n := s.m.active.Add(1)
	for {
		old := s.m.maxActive.Load()
		if n <= old || s.m.maxActive.CompareAndSwap(old, n) {
			return
		}
	}
}

func (s *mxSession) endTx() {
	if s.inTx {
		s.inTx = false
		s.m.active.Add(-1)
	}
}

func (s *mxSession) AuthMechanisms() []string {
	if s.opts.AuthUser == "" {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *mxSession) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		if user != s.opts.AuthUser || pass != s.opts.AuthPass {
			return smtp.ErrAuthFailed
		}
		s.authUser = user
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error { return check(user, pass) }), nil
	case sasl.Login:
		return &mxLoginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *mxSession) Reset() {
	s.endTx()
	s.from, s.to = "", nil
}

func (s *mxSession) Logout() error {
	s.endTx()
	return nil
}

func (s *mxSession) Mail(from string, opts *smtp.MailOptions) error {
	if s.opts.AuthUser != "" && s.authUser == "" {
		return smtp.ErrAuthRequired
	}
	s.from = from
	s.requireTLS = opts != nil && opts.RequireTLS
	s.beginTx()
	return nil
}

func (s *mxSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	m := s.m
	m.mu.Lock()
	key := strings.ToLower(to)
	var reply *smtp.SMTPError
	if q := m.rcptScript[key]; len(q) > 0 {
		reply = q[0]
		m.rcptScript[key] = q[1:]
	}
	m.mu.Unlock()
	if reply != nil {
		return reply
	}
	s.to = append(s.to, to)
	return nil
}

func (s *mxSession) Data(r io.Reader) error {
	defer s.endTx()
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := s.m
	m.mu.Lock()
	delay, dataReply := m.delay, m.dataReply
	m.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
	if dataReply != nil {
		if e := dataReply(s.from, s.to); e != nil {
			return e
		}
	}
	m.mu.Lock()
	m.msgs = append(m.msgs, MXMessage{From: s.from, To: append([]string(nil), s.to...), Data: data,
		TLS: s.tls, Helo: s.helo, AuthUser: s.authUser, RequireTLS: s.requireTLS, At: time.Now()})
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
	return nil
}

// mxLoginServer is the server side of AUTH LOGIN.
type mxLoginServer struct {
	check func(user, pass string) error
	user  string
	step  int
}

func (l *mxLoginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step++
		if len(resp) > 0 {
			l.user = string(resp)
			l.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.user = string(resp)
		l.step++
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(resp))
	}
}

// SelfSignedTLS makes a TLS server config with a certificate for names
// (signed by a throwaway CA) and returns the CA's PEM.
func SelfSignedTLS(t testing.TB, names ...string) (*tls.Config, []byte) {
	t.Helper()
	ca := NewTLSCA(t)
	return ca.Issue(names...), bytes.Clone(ca.PEM)
}
