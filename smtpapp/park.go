package smtpapp

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Parking: a plaintext session that sits idle between transactions gives
// back what a live go-smtp connection holds (its goroutine and stack, a
// 4 KiB reader and a 4 KiB writer) and the wire's line buffer. What is
// left is the socket, the Conn and an entry in one epoll set (Linux; a
// small goroutine each elsewhere) that waits for the socket to become
// readable or its read deadline. When the client speaks again, the wire
// serves it without go-smtp (serveDetached) until a command needs go-smtp;
// then the session goes on on a fresh go-smtp connection that hears the
// greeting replayed in silence (attach): to the client nothing happened.
// A new plaintext connection starts the same way, detached. This is what
// lets 10,000 idle connections (a flood of them, or MTAs holding sessions
// open) cost a fraction of 10,000 live ones, in the spirit of Postfix's
// postscreen, which holds clients cheaply until they do something.
//
// Only plaintext sessions park: TLS keeps state in crypto/tls that the
// wire cannot see into. A session in a transaction, inside AUTH or with
// unread input never parks.

// poller waits for parked connections: one epoll set on Linux
// (poller_linux.go), none elsewhere (parkPoller is nil there).
type poller interface {
	// add waits for w's socket to become readable, or for deadline.
	add(w *wire, deadline time.Time) error
	// remove takes w out; false if it was not in (woken already).
	remove(w *wire) bool
}

// parking is a server's set of parked connections.
type parking struct {
	mu      sync.Mutex
	state   parkState
	wires   map[*wire]struct{}
	pending sync.WaitGroup // parks begun, not yet resumed or closed

	resumed chan *wire    // to go-smtp, through resumeListener
	done    chan struct{} // closed with resumeListener
	once    sync.Once
}

type parkState int

const (
	parkOpen     parkState = iota
	parkDraining           // graceful stop: no new parks; parked sessions wait for their clients
	parkClosed             // stop now: parked sessions close
)

func newParking() *parking {
	return &parking{wires: map[*wire]struct{}{}, resumed: make(chan *wire), done: make(chan struct{})}
}

// begin registers w as parking, unless the server is stopping.
func (p *parking) begin(w *wire) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != parkOpen {
		return false
	}
	p.wires[w] = struct{}{}
	p.pending.Add(1)
	return true
}

func (p *parking) end(w *wire) {
	p.mu.Lock()
	delete(p.wires, w)
	p.mu.Unlock()
	p.pending.Done()
}

func (p *parking) current() parkState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// stop ends parking. A stop-now (parkClosed) wakes every parked or
// detached session to close it. A graceful stop (parkDraining) wakes no
// one: each session stays parked until its client speaks, and goes to
// go-smtp only once a command needs it, so a reload under 10,000 idle
// sessions does not build 10,000 go-smtp connections at once. Draining
// waits (until wait is closed) for every parked or detached session to
// end or reach go-smtp, so that go-smtp's Shutdown then waits for them
// like for any other session; those still parked when wait closes are
// closed.
func (p *parking) stop(state parkState, wait <-chan struct{}) {
	p.mu.Lock()
	if state < p.state { // an exit closed it already; never back to draining
		state = p.state
	}
	p.state = state
	if state == parkClosed {
		for w := range p.wires {
			w.wakeParked()
		}
	}
	p.mu.Unlock()
	if wait == nil {
		return
	}
	idle := make(chan struct{})
	go func() { p.pending.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-wait:
		p.stop(parkClosed, nil)
	}
}

// resumeListener hands resumed connections to go-smtp's Serve, which owns
// and closes it like the server's other listeners.
type resumeListener struct {
	p    *parking
	addr net.Addr
}

func (l resumeListener) Accept() (net.Conn, error) {
	select { // closed wins over a waiting session
	case <-l.p.done:
		return nil, net.ErrClosed
	default:
	}
	select {
	case w := <-l.p.resumed:
		return w, nil
	case <-l.p.done:
		return nil, net.ErrClosed
	}
}

func (l resumeListener) Close() error {
	l.p.once.Do(func() { close(l.p.done) })
	return nil
}

func (l resumeListener) Addr() net.Addr { return l.addr }

// How a resumed session gets back to where it was: go-smtp's greeting is
// swallowed, then the client's HELO/EHLO is replayed and its reply
// swallowed too.
const (
	resumeNone     = iota
	resumeGreeting // swallow go-smtp's 220
	resumeHello    // replay the greeting
	resumeHelloAck // swallow its reply
)

// mayPark: a plaintext session between transactions, nothing pending.
func (w *wire) mayPark() bool {
	return w.parkAfter > 0 && !w.tlsOn && w.mode == modeCommand && !w.inMail && !w.bdat &&
		!w.authReply && w.br.Buffered() == 0
}

// idleUntilParked waits up to parkAfter for the client's next bytes. It
// reports true when the client stayed silent and the session is parking:
// go-smtp then sees the end of the stream, and its Close starts the wait
// (see Close).
func (w *wire) idleUntilParked() bool {
	dl := w.readDeadline()
	t := time.Now().Add(w.parkAfter)
	if !t.Before(dl) {
		return false
	}
	w.raw.SetReadDeadline(t)
	if _, err := w.br.Peek(1); !errors.Is(err, os.ErrDeadlineExceeded) {
		return false // input, or an error the normal read will see again
	}
	if !time.Now().Before(dl) || !w.detached && !w.srv.parking.begin(w) {
		return false
	}
	w.parkDeadline = dl
	w.parking.Store(true)
	return true
}

// park starts the wait, once go-smtp has let go of the connection. On
// Linux one epoll set (poller_linux.go) waits for all parked connections
// of the process, with a timer each for the read deadline; elsewhere a
// small goroutine each waits (waitReadable).
func (w *wire) park() {
	w.detached = true
	// The buffers go back while idle: the line buffer to the next
	// connection (lineReaders), the reply buffers to the heap.
	freeLineReader(w.br)
	w.br, w.out, w.replyBuf, w.pending = nil, nil, nil, nil
	w.srv.metrics.parked.WithLabelValues(w.srv.name).Inc()
	pp := parkPoller()
	if pp == nil {
		go func() {
			w.waiting.Store(true) // a stop-now wakes it like a detached read (wakeParked)
			err := waitReadable(w.raw, w.parkDeadline, func() bool { return w.srv.parking.current() == parkClosed })
			w.waiting.Store(false)
			w.unpark(err)
		}()
		return
	}
	if err := pp.add(w, w.parkDeadline); err != nil {
		w.conn.Logger().Warn("cannot park, resuming", zap.Error(err))
		w.parkAfter = 0 // and do not try again
		go w.unpark(nil)
		return
	}
	// A stop-now that came before add could not wake it (see parking.stop).
	if w.srv.parking.current() == parkClosed && pp.remove(w) {
		go w.unpark(nil)
	}
}

// wakeParked ends a parked wait early (the server stops now); a
// detached session waiting for a command line gets its read deadline
// moved to now (one in a TLS handshake or skipping a chunk is left to
// finish: serveDetached sees the stop after it).
func (w *wire) wakeParked() {
	if pp := parkPoller(); pp != nil && pp.remove(w) {
		go w.unpark(nil)
		return
	}
	if w.waiting.Load() {
		w.raw.SetReadDeadline(time.Now())
	}
}

// unpark ends a parked wait: err is nil when the client spoke (or the
// wait was woken), os.ErrDeadlineExceeded at the read deadline.
func (w *wire) unpark(err error) {
	w.srv.metrics.parked.WithLabelValues(w.srv.name).Dec()
	state := w.srv.parking.current()
	switch {
	case state == parkClosed:
		w.shuttingDown()
		w.closeDetached()
		return
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The read timeout (or the session's) ran out while parked: the
		// answer an idle live session gets, without waking go-smtp.
		w.idleTimeout()
		return
	case err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
		w.closeDetached()
		return
	}
	w.br = newLineReader(w.tr, w.lim.MaxLineLength)
	w.serveDetached()
}

// startDetached greets a new client without go-smtp, if it can park
// (plaintext, parking on: after an implicit-TLS handshake tlsOn is set).
func (w *wire) startDetached() bool {
	if w.parkAfter == 0 || w.tlsOn || !w.srv.parking.begin(w) {
		return false
	}
	w.detached = true
	// go-smtp's own greeting, through the same reply path.
	w.Write([]byte("220 " + w.srv.Hostname + " ESMTP Service Ready\r\n"))
	w.serveDetached()
	return true
}

// serveDetached runs a plaintext session while no go-smtp connection
// has it: from the greeting, and again after a park. The wire answers
// the greeting commands (and everything it refuses) itself; the first
// command that needs go-smtp attaches the session to a fresh go-smtp
// connection, which hears the greeting replayed (attach). So a client
// that connects, says EHLO and waits costs no go-smtp state at all: the
// cheap front that Postfix's postscreen puts before smtpd.
func (w *wire) serveDetached() {
	p := w.srv.parking
	for {
		if p.current() == parkClosed {
			w.shuttingDown()
			w.closeDetached()
			return
		}
		if w.tlsOn { // the EHLO reply under TLS is go-smtp's (AUTH)
			w.attach()
			return
		}
		err := w.nextCommand()
		switch {
		case w.parking.Load():
			w.parking.Store(false)
			w.park()
			return
		case w.closing.Load():
			w.closeDetached()
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			if p.current() == parkClosed {
				continue // woken by a stop-now
			}
			w.idleTimeout()
			return
		case err != nil:
			w.closeDetached()
			return
		case len(w.out) == 0: // answered by the wire
		case w.inflight == "EHLO" || w.inflight == "HELO":
			name := w.conn.Helo()
			w.out = nil
			w.Write([]byte(w.helloReply(w.inflight, name)))
		default:
			w.attach()
			return
		}
	}
}

// helloReply is go-smtp's reply to HELO or EHLO (v0.25, handleGreet) as
// this server configures it, for a plaintext session: no AUTH offered
// (AuthMechanisms) and no REQUIRETLS; STARTTLS is the wire's to add.
// TestDetachedGreetingIsGoSMTPs compares the two.
func (w *wire) helloReply(verb, name string) string {
	if verb == "HELO" {
		return "250 2.0.0 Hello " + name + "\r\n"
	}
	return "250-Hello " + name + "\r\n" + w.srv.ehloTail()
}

// ehloTail is the EHLO reply after its first line, made once.
func (s *Server) ehloTail() string {
	s.ehloOnce.Do(func() {
		gs := s.smtp
		caps := []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"}
		if gs.EnableSMTPUTF8 {
			caps = append(caps, "SMTPUTF8")
		}
		caps = append(caps, "SIZE "+strconv.FormatInt(gs.MaxMessageBytes, 10))
		if gs.MaxRecipients > 0 {
			caps = append(caps, "LIMITS RCPTMAX="+strconv.Itoa(gs.MaxRecipients))
		}
		var b strings.Builder
		for i, c := range caps {
			sep := "-"
			if i == len(caps)-1 {
				sep = " "
			}
			b.WriteString("250" + sep + c + "\r\n")
		}
		s.ehloReply = b.String()
	})
	return s.ehloReply
}

// attach hands a detached session to a fresh go-smtp connection. The
// command that needs go-smtp (w.out, if any) waits until the greeting
// has been replayed (see resumeReply).
func (w *wire) attach() {
	p := w.srv.parking
	if p.current() == parkClosed {
		w.out = nil
		w.shuttingDown()
		w.closeDetached()
		return
	}
	w.held, w.out = w.out, nil
	w.resume = resumeGreeting
	w.detached = false
	w.endOnGreeting = true
	select {
	case p.resumed <- w:
		// go-smtp's goroutine ends the registration when it greets
		// (resumeReply): after go-smtp counts the session, so that a
		// Shutdown waiting for both sees it.
	case <-p.done:
		w.endOnGreeting = false
		w.detached = true
		w.resume, w.held = resumeNone, nil
		w.shuttingDown()
		w.closeDetached()
	}
}

// idleTimeout ends a detached session at its read deadline.
func (w *wire) idleTimeout() {
	w.conn.Logger().Debug("closing: idle timeout")
	w.finalReply([]byte(formatReply(replyIdleTimeout)), 421, false)
	w.closeDetached()
}

// shuttingDown tells a client waiting for a command that the server is
// stopping (RFC 5321 3.8: a 421 before the close).
func (w *wire) shuttingDown() {
	w.conn.Logger().Debug("closing: server stopping")
	w.finalReply([]byte(formatReply(replyShuttingDown)), 421, false)
}

// closeDetached closes a session that go-smtp does not have.
func (w *wire) closeDetached() {
	w.Close()
	w.srv.parking.end(w)
}

// lineReaders recycle the wire's line buffers: a session that parks gives
// its buffer back and the next connection takes it, so that a flood of
// idle connections does not leave one buffer each behind as garbage.
var lineReaders sync.Pool

func newLineReader(r io.Reader, size int) *bufio.Reader {
	if br, _ := lineReaders.Get().(*bufio.Reader); br != nil && br.Size() == size {
		br.Reset(r)
		return br
	}
	return bufio.NewReaderSize(r, size)
}

func freeLineReader(br *bufio.Reader) {
	br.Reset(nil)
	lineReaders.Put(br)
}

// replayHello is the greeting a resumed session says again to go-smtp:
// HELO even after EHLO, as go-smtp keeps nothing but the name (EHLO's
// extensions are the wire's to check), and HELO's reply is one line.
func (w *wire) replayHello() []byte {
	w.resume = resumeHelloAck
	return []byte("HELO " + w.conn.Helo() + "\r\n")
}

// resumeReply swallows go-smtp's replies while a session resumes; once
// it has, the command held back at attach goes to go-smtp.
func (w *wire) resumeReply(line []byte) {
	if len(line) >= 4 && line[3] == '-' {
		return // more lines follow
	}
	if w.resume == resumeGreeting && w.endOnGreeting {
		w.endOnGreeting = false
		w.srv.parking.end(w)
		if w.srv.parking.current() == parkClosed { // stopped now meanwhile
			w.resume, w.held = resumeNone, nil
			w.shuttingDown()
			return
		}
	}
	switch {
	case w.resume == resumeGreeting && w.greeted != 0:
		w.resume = resumeHello
		return
	case w.resume == resumeHelloAck && !(len(line) >= 3 && string(line[:3]) == "250"):
		// Cannot happen (the wire reads the name as go-smtp does): end
		// the session rather than run it in a state the client does not
		// know, and say so.
		w.conn.Logger().Warn("closing: resumed session not greeted", zap.ByteString("reply", line))
		w.resume, w.held = resumeNone, nil
		w.finalReply([]byte(formatReply(replyInternal)), 421, false)
		return
	}
	w.resume = resumeNone
	w.out, w.held = w.held, nil
}

// closeResume closes the resume listener, whether or not go-smtp's Serve
// has taken it yet (go-smtp closes only the listeners it has).
func (p *parking) closeResume() { resumeListener{p: p}.Close() }
