package testenv

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// UTF8MX is a small test MX for SMTPUTF8 (RFC 6531): it offers the
// extension or not, and records whether each transaction's MAIL carried
// it. (MX, StartMX's server, neither offers SMTPUTF8 nor records it.)
type UTF8MX struct {
	Addr string // ip:port

	srv *smtp.Server
	mu  sync.Mutex
	msg []UTF8Message
}

// UTF8Message is one accepted transaction of a UTF8MX.
type UTF8Message struct {
	From string
	To   []string
	UTF8 bool // MAIL FROM carried SMTPUTF8
	Data []byte
}

// StartUTF8MX starts a UTF8MX on addr (ip:port; port 0 picks one), which
// offers SMTPUTF8 when offer is set. Without it, go-smtp refuses MAIL
// with SMTPUTF8 (504) and takes 8-bit addresses as they come: a client
// must not send them. It stops when the test ends.
func StartUTF8MX(t testing.TB, addr string, offer bool) *UTF8MX {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("test MX on %s: %v", addr, err)
	}
	m := &UTF8MX{Addr: ln.Addr().String()}
	s := smtp.NewServer(utf8Backend{m})
	s.Domain = "mx.utf8.test"
	s.ReadTimeout, s.WriteTimeout = 30*time.Second, 30*time.Second
	s.EnableSMTPUTF8 = offer
	s.ErrorLog = nopLogger{}
	m.srv = s
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return m
}

// Messages returns the accepted transactions so far.
func (m *UTF8MX) Messages() []UTF8Message {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]UTF8Message(nil), m.msg...)
}

// WaitMessages waits until n transactions were accepted.
func (m *UTF8MX) WaitMessages(n int, timeout time.Duration) bool {
	return WaitFor(timeout, func() bool { return len(m.Messages()) >= n })
}

type utf8Backend struct{ m *UTF8MX }

func (b utf8Backend) NewSession(*smtp.Conn) (smtp.Session, error) { return &utf8Session{m: b.m}, nil }

type utf8Session struct {
	m  *UTF8MX
	tx UTF8Message
}

func (s *utf8Session) Mail(from string, opts *smtp.MailOptions) error {
	s.tx = UTF8Message{From: from, UTF8: opts != nil && opts.UTF8}
	return nil
}

func (s *utf8Session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.tx.To = append(s.tx.To, to)
	return nil
}

func (s *utf8Session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.tx.Data = data
	s.m.mu.Lock()
	s.m.msg = append(s.m.msg, s.tx)
	s.m.mu.Unlock()
	s.tx = UTF8Message{}
	return nil
}

func (s *utf8Session) Reset()        { s.tx = UTF8Message{} }
func (s *utf8Session) Logout() error { return nil }
