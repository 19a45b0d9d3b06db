package smtpapp

import (
	"sync"
	"time"
)

// sessions are a server's open connections, so that the end of a stopping
// config's grace period can end them: go-smtp's Close does nothing once its
// Shutdown has begun.
type sessions struct {
	mu    sync.Mutex
	m     map[*Conn]struct{}
	empty chan struct{} // closed when m becomes empty (waitEmpty)
	ended bool          // endAll ran: a session added later is ended at once
}

func (s *sessions) add(c *Conn) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[*Conn]struct{}{}
	}
	s.m[c] = struct{}{}
	if s.ended { // admitted by a listener an instant before it closed
		end(c)
	}
	s.mu.Unlock()
}

func (s *sessions) remove(c *Conn) {
	s.mu.Lock()
	delete(s.m, c)
	if len(s.m) == 0 && s.empty != nil {
		close(s.empty)
		s.empty = nil
	}
	s.mu.Unlock()
}

func (s *sessions) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// waitEmpty waits until no session is left, or until stop is closed; it
// reports whether none is left.
func (s *sessions) waitEmpty(stop <-chan struct{}) bool {
	s.mu.Lock()
	if len(s.m) == 0 {
		s.mu.Unlock()
		return true
	}
	if s.empty == nil {
		s.empty = make(chan struct{})
	}
	empty := s.empty
	s.mu.Unlock()
	select {
	case <-empty:
		return true
	case <-stop:
		return false
	}
}

// endAll ends the input of every session: its next read sees the end of
// the stream, so whatever holds it (go-smtp, the wire) closes it as it
// closes a session whose client left, with a 421 for one waiting for a
// command (shuttingDown). A message still arriving is dropped
// unacknowledged; one being stored is stored and answered. The
// socket itself is closed by its holder, not here, so that no descriptor
// is reused under a session that still has it (a parked one in the epoll
// set, say). It returns how many sessions there were.
func (s *sessions) endAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = true
	for c := range s.m {
		end(c)
	}
	return len(s.m)
}

func end(c *Conn) {
	c.wire.ended.Store(true)
	if cr, ok := c.wire.raw.(interface{ CloseRead() error }); ok { // TCP and Unix sockets
		cr.CloseRead()
	} else {
		c.wire.raw.SetReadDeadline(time.Now()) // never a close: see endAll
	}
}
