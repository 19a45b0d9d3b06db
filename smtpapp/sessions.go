package smtpapp

import (
	"net"
	"sync"
	"time"
)

// sessions are a server's open connections, so that the end of a stopping
// config's grace period can end them: go-smtp's Close does nothing once its
// Shutdown has begun.
type sessions struct {
	mu sync.Mutex
	m  map[*Conn]struct{}
}

func (s *sessions) add(c *Conn) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[*Conn]struct{}{}
	}
	s.m[c] = struct{}{}
	s.mu.Unlock()
}

func (s *sessions) remove(c *Conn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

// endAll ends the input of every session: its next read sees the end of
// the stream, so whatever holds it (go-smtp, the wire, the parking) closes
// it as it closes a session whose client left. A message still arriving
// is dropped unacknowledged; one being stored is stored and answered. The
// socket itself is closed by its holder, never here, so that no
// descriptor is reused under a session that still has it. It returns how
// many sessions there were.
func (s *sessions) endAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.m {
		if cr, ok := c.wire.raw.(interface{ CloseRead() error }); ok {
			cr.CloseRead()
		} else {
			c.wire.raw.SetReadDeadline(aLongTimeAgo)
		}
	}
	return len(s.m)
}

// aLongTimeAgo is a read deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

var _ interface{ CloseRead() error } = (*net.TCPConn)(nil)
