package smtpapp

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// The sockets are shared by every config that listens on an address: a
// reload registers the new config's listener and unregisters the old one
// on the same socket, which stays open, so no connection is ever refused
// or reset by a reload (closing a SO_REUSEPORT socket would reset the
// connections in its queue).
var sockets = caddy.NewUsagePool()

// socket is one bound address with its accept loop; each accepted
// connection goes to the newest registered listener.
type socket struct {
	ln      net.Listener
	logger  *zap.Logger
	mu      sync.Mutex
	targets []*listener
}

func (s *socket) Destruct() error { return s.ln.Close() }

func (s *socket) register(l *listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.targets = append(s.targets, l)
}

func (s *socket) unregister(l *listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, t := range s.targets {
		if t == l {
			s.targets = append(s.targets[:i], s.targets[i+1:]...)
			return
		}
	}
}

func (s *socket) newest() *listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.targets) == 0 {
		return nil
	}
	return s.targets[len(s.targets)-1]
}

// dispatch hands a raw connection to the newest listener.
func (s *socket) dispatch(raw net.Conn) {
	if l := s.newest(); l != nil {
		go l.admit(raw)
		return
	}
	raw.Close()
}

func (s *socket) acceptLoop() {
	var delay time.Duration
	for {
		raw, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, go on.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay *= 2; delay > time.Second {
				delay = time.Second
			}
			s.logger.Error("accept", zap.Error(err), zap.Duration("retry_in", delay))
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.dispatch(raw)
	}
}

// listener is one config's server on a shared socket. It admits
// connections: it runs the connect hooks (and, for implicit TLS, the
// handshake) on each in its own goroutine, and hands the admitted ones to
// go-smtp. A slow hook (a tarpit) never holds up other clients.
type listener struct {
	sock      *socket
	key       string
	srv       *Server
	admitted  chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newListener(srv *Server, addr caddy.NetworkAddress, port uint) (*listener, error) {
	key := addr.Network + "/" + addr.JoinHostPort(port)
	val, _, err := sockets.LoadOrNew(key, func() (caddy.Destructor, error) {
		ln, err := addr.Listen(srv.app.ctx, port, net.ListenConfig{})
		if err != nil {
			return nil, err
		}
		s := &socket{ln: ln.(net.Listener), logger: srv.logger}
		go s.acceptLoop()
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	l := &listener{sock: val.(*socket), key: key, srv: srv, admitted: make(chan net.Conn), done: make(chan struct{})}
	l.sock.register(l)
	return l, nil
}

// Accept returns the next admitted connection.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.admitted:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Addr is the socket's address.
func (l *listener) Addr() net.Addr { return l.sock.ln.Addr() }

// Close unregisters from the socket (closed when no config uses it).
func (l *listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.sock.unregister(l)
		close(l.done)
		_, err = sockets.Delete(l.key)
	})
	return err
}

// admit runs the connection phase of one client.
func (l *listener) admit(raw net.Conn) {
	srv := l.srv
	lim := srv.Limits.withDefaults()
	nc := &netConn{Conn: raw, readTimeout: time.Duration(lim.ReadTimeout), writeTimeout: time.Duration(lim.WriteTimeout),
		inspect: true, startTLS: srv.smtp.TLSConfig != nil}
	nc.deadline = time.Now().Add(time.Duration(lim.SessionTimeout))
	c := srv.newConn(nc)
	srv.metrics.accepted.WithLabelValues(srv.name).Inc()
	srv.metrics.connections.WithLabelValues(srv.name).Inc()

	var conn net.Conn = nc
	if srv.ImplicitTLS {
		nc.inspect = false // the raw stream is TLS
		tc := tls.Server(nc, srv.tlsConfig)
		hsCtx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
		err := tc.HandshakeContext(hsCtx)
		cancel()
		if err != nil {
			c.logger.Debug("TLS handshake failed", zap.Error(err))
			nc.Close()
			return
		}
		st := tc.ConnectionState()
		c.tlsState = &st
		conn = &tlsPlain{Conn: tc, nc: nc}
	}

	if err := srv.runConnect(c); err != nil {
		c.own(err)
		writeReply(conn, err, time.Duration(lim.WriteTimeout))
		conn.Close()
		return
	}
	select {
	case l.admitted <- conn:
	case <-l.done:
		// A reload closed this config while the client was being
		// admitted: a plaintext client, still silent, starts over on the
		// new config; others are closed (rare: implicit TLS mid-reload).
		if !srv.ImplicitTLS && !nc.closing.Load() {
			c.finish()
			l.sock.dispatch(raw)
			return
		}
		conn.Close()
	}
}

// writeReply writes a reply outside of go-smtp (before the greeting).
func writeReply(conn net.Conn, err error, timeout time.Duration) {
	var e *Error
	if !errors.As(err, &e) {
		e = Errorf(421, [3]int{4, 3, 0}, "Service temporarily unavailable")
	}
	conn.SetWriteDeadline(time.Now().Add(timeout))
	io.WriteString(conn, formatReply(e))
}

func formatReply(e *Error) string {
	ec := e.EnhancedCode
	return fmt.Sprintf("%d %d.%d.%d %s\r\n", e.Code, ec[0], ec[1], ec[2], e.Message)
}

// netConn wraps the client's TCP connection, under any TLS layer. It applies
// the per-read timeout and the whole-session limit, ends the session when a
// reply asked for it (421), and watches the plaintext command stream for
// bare CR or LF, which go-smtp's line reader would otherwise accept.
type netConn struct {
	net.Conn
	conn         *Conn
	readTimeout  time.Duration
	writeTimeout time.Duration
	deadline     time.Time
	closing      atomic.Bool
	bareEOL      atomic.Bool
	inData       atomic.Bool // a message body is being read

	// Stream inspection, only while the stream is plaintext.
	inspect     bool
	startTLS    bool // the server offers STARTTLS
	sawSTARTTLS bool // a STARTTLS line was seen
	prevCR      bool
	lineLen     int
	line        [8]byte

	closeOnce sync.Once
}

func (n *netConn) Read(b []byte) (int, error) {
	if n.closing.Load() {
		return 0, io.EOF
	}
	dl := n.deadline
	if n.readTimeout > 0 {
		if t := time.Now().Add(n.readTimeout); t.Before(dl) {
			dl = t
		}
	}
	n.Conn.SetReadDeadline(dl)
	k, err := n.Conn.Read(b)
	if n.inspect && k > 0 {
		n.scan(b[:k])
	}
	return k, err
}

// Write watches the replies while the stream is plaintext. go-smtp's 220
// to STARTTLS ends that: what follows, both ways, is TLS.
func (n *netConn) Write(b []byte) (int, error) {
	if n.inspect && n.conn != nil {
		n.conn.observeReplies(b)
		if n.writeTimeout > 0 { // an event hook may have waited (a tarpit)
			n.Conn.SetWriteDeadline(time.Now().Add(n.writeTimeout))
		}
		if n.sawSTARTTLS && bytes.HasPrefix(b, []byte("220 ")) {
			n.inspect = false
		}
	}
	return n.Conn.Write(b)
}

// SetReadDeadline is a no-op: Read sets the deadline itself.
func (n *netConn) SetReadDeadline(time.Time) error { return nil }

// scan flags bare CR/LF, and notes a STARTTLS command line (outside a
// message body): Write stops the inspection when go-smtp accepts it.
func (n *netConn) scan(b []byte) {
	for _, ch := range b {
		if n.prevCR && ch != '\n' || ch == '\n' && !n.prevCR {
			n.flagBareEOL()
		}
		if ch == '\n' {
			// Exactly "STARTTLS" CR LF (the length counts the CR).
			if n.startTLS && n.lineLen == 9 && isSTARTTLS(n.line[:]) && !n.inData.Load() {
				n.sawSTARTTLS = true
			}
			n.lineLen = 0
		} else {
			if n.lineLen < len(n.line) {
				n.line[n.lineLen] = ch
			}
			n.lineLen++
		}
		n.prevCR = ch == '\r'
	}
}

// flagBareEOL marks the stream. Outside a message body, where the session
// refuses the message itself, the connection ends after what was already
// read is answered: a command line that go-smtp accepts anyway (NOOP,
// RSET) does not keep it open.
func (n *netConn) flagBareEOL() {
	n.bareEOL.Store(true)
	if !n.inData.Load() {
		n.closing.Store(true)
	}
}

func isSTARTTLS(b []byte) bool {
	const want = "STARTTLS"
	for i := 0; i < len(want); i++ {
		if b[i]&^0x20 != want[i] {
			return false
		}
	}
	return true
}

func (n *netConn) Close() error {
	err := n.Conn.Close()
	n.closeOnce.Do(func() {
		if n.conn != nil {
			n.conn.finish()
		}
	})
	return err
}

// tlsPlain is the decrypted side of an implicit-TLS connection, inspected
// like a plaintext one (bare CR/LF in command lines).
type tlsPlain struct {
	*tls.Conn
	nc *netConn
}

func (t *tlsPlain) Read(b []byte) (int, error) {
	if t.nc.closing.Load() { // before records already decrypted
		return 0, io.EOF
	}
	k, err := t.Conn.Read(b)
	if k > 0 {
		t.nc.scan(b[:k])
	}
	return k, err
}

// SetReadDeadline is a no-op: the netConn below sets read deadlines.
func (t *tlsPlain) SetReadDeadline(time.Time) error { return nil }

func (t *tlsPlain) Write(b []byte) (int, error) {
	t.nc.conn.observeReplies(b)
	if t.nc.writeTimeout > 0 { // a tarpit may have waited
		t.Conn.SetWriteDeadline(time.Now().Add(t.nc.writeTimeout))
	}
	return t.Conn.Write(b)
}

// netConnOf finds our wrapper under a TLS layer.
func netConnOf(c net.Conn) *netConn {
	for {
		switch v := c.(type) {
		case *tlsPlain:
			return v.nc
		case *netConn:
			return v
		case *tls.Conn:
			c = v.NetConn()
		default:
			return nil
		}
	}
}
