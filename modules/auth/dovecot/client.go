package dovecot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// An endpoint is one socket of Dovecot's auth service (auth-client or
// auth-userdb). It keeps one connection open and sends every request on
// it, each with its own ID, as Dovecot's own login processes do: the
// service answers requests in any order (a failed login is answered
// only after auth_failure_delay), so one slow answer holds up no other.
// A connection that breaks is dialed again by the next request.
type endpoint struct {
	network, addr string
	// master selects the auth-master protocol (userdb lookups) rather
	// than auth-client.
	master bool

	lock   chan struct{} // held while the connection is checked or dialed
	cur    *conn
	closed bool
	nextID atomic.Uint32
}

func newEndpoint(network, addr string, master bool) *endpoint {
	return &endpoint{network: network, addr: addr, master: master, lock: make(chan struct{}, 1)}
}

// errConnLost: the connection broke before the answer came.
var errConnLost = errors.New("connection to the Dovecot auth service lost")

// conn is one open connection and the requests waiting on it.
type conn struct {
	nc    net.Conn
	mechs map[string]bool // auth-client: the mechanisms offered

	wmu sync.Mutex // one writer at a time

	mu      sync.Mutex
	pending map[string]chan reply
	err     error         // why the connection is dead, once it is
	dead    chan struct{} // closed when err is set
}

// fail marks the connection dead and closes it; requests waiting on it
// get errConnLost.
func (c *conn) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	close(c.dead)
	c.nc.Close()
}

func (c *conn) alive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == nil
}

// readLoop hands each answer to the request with its ID; lines for no
// waiting request (handshake leftovers such as SPID, answers that came
// after their request gave up) are dropped.
func (c *conn) readLoop(br *bufio.Reader) {
	for {
		line, err := readLine(br)
		if err != nil {
			c.fail(err)
			return
		}
		r, err := parseReply(line)
		if err != nil {
			c.fail(fmt.Errorf("%w: %q", err, truncate(line)))
			return
		}
		if r.ID == "" {
			continue
		}
		c.mu.Lock()
		ch := c.pending[r.ID]
		delete(c.pending, r.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- r // buffered, and used once
		}
	}
}

// readLine reads one line without its "\n"; a line longer than maxLine
// is an error (the reader's buffer is maxLine long).
func readLine(br *bufio.Reader) (string, error) {
	b, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return "", fmt.Errorf("line from the auth service longer than %d bytes", maxLine)
	}
	if err != nil {
		return "", err
	}
	return string(b[:len(b)-1]), nil
}

func truncate(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}

// do sends the request that build makes from a fresh ID and waits for
// its answer until ctx is done. A request that went out on a connection
// opened earlier and lost before any answer is sent once more on a new
// one (the service may have closed an idle connection).
func (e *endpoint) do(ctx context.Context, build func(id string) string) (reply, error) {
	for attempt := 0; ; attempt++ {
		c, fresh, err := e.get(ctx)
		if err != nil {
			return reply{}, err
		}
		id := strconv.FormatUint(uint64(e.nextID.Add(1)), 10)
		r, err := c.roundTrip(ctx, id, build(id))
		if errors.Is(err, errConnLost) && !fresh && attempt == 0 && ctx.Err() == nil {
			continue
		}
		if err != nil {
			return reply{}, fmt.Errorf("Dovecot auth service at %s: %w", e, err)
		}
		return r, nil
	}
}

func (c *conn) roundTrip(ctx context.Context, id, line string) (reply, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return reply{}, errConnLost
	}
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}

	c.wmu.Lock()
	dl, _ := ctx.Deadline()
	c.nc.SetWriteDeadline(dl)
	_, err := c.nc.Write([]byte(line + "\n"))
	c.wmu.Unlock()
	if err != nil {
		forget()
		c.fail(err)
		return reply{}, fmt.Errorf("%w: %v", errConnLost, err)
	}
	select {
	case r := <-ch:
		return r, nil
	case <-c.dead:
		forget()
		return reply{}, fmt.Errorf("%w: %v", errConnLost, c.err)
	case <-ctx.Done():
		forget()
		return reply{}, fmt.Errorf("no answer in time: %w", ctx.Err())
	}
}

// get returns the open connection, or dials a new one (fresh).
func (e *endpoint) get(ctx context.Context) (c *conn, fresh bool, err error) {
	select {
	case e.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, false, fmt.Errorf("waiting for the connection to the Dovecot auth service at %s: %w", e, ctx.Err())
	}
	defer func() { <-e.lock }()
	if e.closed {
		return nil, false, fmt.Errorf("the Dovecot auth client for %s is closed", e)
	}
	if e.cur != nil && e.cur.alive() {
		return e.cur, false, nil
	}
	c, err = e.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	e.cur = c
	return c, true, nil
}

func (e *endpoint) String() string { return e.network + ":" + e.addr }

// dial connects and does the handshake, all within ctx.
func (e *endpoint) dial(ctx context.Context) (*conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, e.network, e.addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to the Dovecot auth service at %s: %w", e, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	// Closing the socket when ctx ends also ends a handshake that
	// waits with no deadline.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	c := &conn{nc: nc, pending: map[string]chan reply{}, dead: make(chan struct{})}
	br := bufio.NewReaderSize(nc, maxLine)
	if e.master {
		err = handshakeMaster(nc, br)
	} else {
		c.mechs, err = handshakeClient(nc, br)
	}
	if !stop() || err != nil {
		nc.Close()
		if err == nil || ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("handshake with the Dovecot auth service at %s: %w", e, err)
	}
	nc.SetDeadline(time.Time{})
	go c.readLoop(br)
	return c, nil
}

// handshakeClient: the client says VERSION and CPID; the service says
// VERSION, MECH lines, SPID, CUID, COOKIE, then DONE.
func handshakeClient(nc net.Conn, br *bufio.Reader) (map[string]bool, error) {
	if _, err := fmt.Fprintf(nc, "VERSION\t1\t2\nCPID\t%d\n", os.Getpid()); err != nil {
		return nil, err
	}
	mechs := map[string]bool{}
	for first := true; ; first = false {
		line, err := readLine(br)
		if err != nil {
			return nil, err
		}
		r, err := parseReply(line)
		if err != nil {
			return nil, fmt.Errorf("%w: %q", err, truncate(line))
		}
		if first {
			if err := checkVersion(r); err != nil {
				return nil, err
			}
			continue
		}
		switch r.Cmd {
		case "MECH":
			if len(r.Args) > 0 {
				mechs[strings.ToUpper(r.Args[0])] = true
			}
		case "DONE":
			if !mechs["PLAIN"] {
				return nil, errors.New("the service does not offer PLAIN (Dovecot's auth_mechanisms)")
			}
			return mechs, nil
		}
	}
}

// handshakeMaster: both sides say VERSION (the service then says SPID,
// which the read loop drops).
func handshakeMaster(nc net.Conn, br *bufio.Reader) error {
	if _, err := fmt.Fprint(nc, "VERSION\t1\t0\n"); err != nil {
		return err
	}
	line, err := readLine(br)
	if err != nil {
		return err
	}
	r, err := parseReply(line)
	if err != nil {
		return fmt.Errorf("%w: %q", err, truncate(line))
	}
	return checkVersion(r)
}

func checkVersion(r reply) error {
	if r.Cmd != "VERSION" || len(r.Args) < 1 {
		return fmt.Errorf("want VERSION first, got %q", r.Cmd)
	}
	if r.Args[0] != "1" {
		return fmt.Errorf("protocol major version %s is not supported (want 1)", r.Args[0])
	}
	return nil
}

// close closes the connection; requests after it fail.
func (e *endpoint) close() {
	e.lock <- struct{}{}
	defer func() { <-e.lock }()
	e.closed = true
	if e.cur != nil {
		e.cur.fail(errors.New("closed"))
	}
}
