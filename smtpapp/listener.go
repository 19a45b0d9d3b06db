package smtpapp

import (
	"errors"
	"net"
	"sync"
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

// dispatch hands a raw connection to the newest listener, unless it is
// over the server's connection ceilings: then it gets its 421 here, in
// the accept loop, with no goroutine or buffer of its own.
func (s *socket) dispatch(raw net.Conn) {
	l := s.newest()
	if l == nil {
		raw.Close()
		return
	}
	if refusal := l.srv.ceiling.admit(addrPortOf(raw.RemoteAddr()).Addr()); refusal != nil {
		l.srv.refuseAtAccept(raw, refusal)
		return
	}
	go l.admit(raw)
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
		// No TCP keepalive: read timeouts end dead sessions, and it would
		// cost four system calls per connection.
		ln, err := addr.Listen(srv.app.ctx, port, net.ListenConfig{KeepAlive: -1})
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

// admit runs the connection phase of one client: the connect hooks,
// before any TLS (a banned client costs no handshake), then for implicit
// TLS the handshake, within its own timeout.
func (l *listener) admit(raw net.Conn) {
	srv := l.srv
	c := srv.newConn(raw)
	if err := srv.hooks.runConnect(c); err != nil {
		reply := replyOf(err)
		if c.wire.ended.Load() { // the stop cut the hook short (a tarpit's wait): say why
			reply = replyShuttingDown
		}
		if !srv.ImplicitTLS { // a TLS client could not read it
			c.wire.send([]byte(formatReply(reply)))
		}
		c.wire.closeAfterReply()
		c.wire.Close()
		return
	}
	c.connectDone()
	if srv.ImplicitTLS {
		if err := c.wire.handshake(); err != nil {
			c.Logger().Debug("TLS handshake failed", zap.Error(err))
			srv.metrics.refused(srv.name, "connect", "", "tls_handshake")
			c.wire.Close()
			return
		}
	}
	if c.wire.startDetached() {
		return // serveDetached had it; go-smtp gets it when needed
	}
	select {
	case l.admitted <- c.wire:
	case <-l.done:
		// A reload closed this config while the client was being
		// admitted: a plaintext client, still silent, starts over on the
		// new config; others are closed (rare: implicit TLS mid-reload).
		if !srv.ImplicitTLS {
			c.finish()
			l.sock.dispatch(raw)
			return
		}
		c.wire.Close()
	}
}
