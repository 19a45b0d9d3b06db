package smtpapp

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// epoller is one epoll set for all parked connections of the process, so
// that a parked connection costs no goroutine: one goroutine waits for
// all, and a timer per connection keeps its read deadline. Each socket is
// added one-shot and taken out when it fires, times out or is woken; the
// runtime's own poller keeps its registration, untouched.
type epoller struct {
	fd    int
	mu    sync.Mutex
	wires map[int32]*wire // by socket
}

var (
	epollOnce sync.Once
	theEpoll  *epoller
)

// parkPoller is the process's epoll set, or nil (then each parked
// connection waits in a goroutine of its own).
func parkPoller() poller {
	epollOnce.Do(func() {
		fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return
		}
		theEpoll = &epoller{fd: fd, wires: map[int32]*wire{}}
		go theEpoll.run()
	})
	if theEpoll == nil {
		return nil
	}
	return theEpoll
}

func (p *epoller) add(w *wire, deadline time.Time) error {
	sc, ok := w.raw.(syscall.Conn)
	if !ok {
		return errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var addErr error
	err = rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(fd)}
		if addErr = unix.EpollCtl(p.fd, unix.EPOLL_CTL_ADD, int(fd), &ev); addErr == nil {
			w.pollFD = int32(fd)
		}
	})
	if err = errors.Join(err, addErr); err != nil {
		return err
	}
	p.wires[w.pollFD] = w
	w.parkTimer = time.AfterFunc(time.Until(deadline), func() {
		if p.remove(w) {
			w.unpark(os.ErrDeadlineExceeded)
		}
	})
	return nil
}

func (p *epoller) remove(w *wire) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wires[w.pollFD] != w {
		return false
	}
	p.take(w.pollFD)
	return true
}

// take drops fd from the set (with p.mu held) and returns its wire.
func (p *epoller) take(fd int32) *wire {
	w := p.wires[fd]
	if w == nil {
		return nil
	}
	delete(p.wires, fd)
	unix.EpollCtl(p.fd, unix.EPOLL_CTL_DEL, int(fd), nil)
	if w.parkTimer != nil {
		w.parkTimer.Stop()
		w.parkTimer = nil
	}
	return w
}

// run hands each socket that fired back to its session.
func (p *epoller) run() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.fd, events, -1)
		if err != nil {
			if err != unix.EINTR {
				time.Sleep(10 * time.Millisecond) // not expected: do not spin
			}
			continue
		}
		for _, ev := range events[:n] {
			p.mu.Lock()
			w := p.take(ev.Fd)
			p.mu.Unlock()
			if w != nil {
				go w.unpark(nil)
			}
		}
	}
}
