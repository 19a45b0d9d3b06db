// Command smtpflood is a bounded load test of a local SMTP server under a
// hostile flood ("Survive the hostile Internet"): many connections from many
// loopback source addresses that either stall in DATA with a large body and
// never send the final dot (scenario data), or connect and sit idle
// (scenario idle). While the flood holds, a probe client on another source
// address sends a complete message and times it from connect to the 250,
// and the server's memory (VmHWM, VmRSS of -pid) is sampled every 250 ms.
//
// It is not a unit test: scripts/flood.sh builds the server, runs the
// quick-start config in a scratch folder and runs this tool against it.
//
//	go run ./internal/cmd/smtpflood -scenario data -pid PID -maildir DIR
//
// Every loop is bounded in count and time (-timeout); traffic goes to
// -addr only, which must be a loopback address. Exit status 1 on FAIL
// (peak RSS over -max-rss, a probe slower than -max-probe or not stored),
// 2 on bad flags.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type config struct {
	scenario      string
	addr          string
	conns         int
	sources       int
	sourceBase    netip.Addr
	probeFrom     netip.Addr
	bodySize      int
	concurrency   int
	timeout       time.Duration
	stepTimeout   time.Duration
	pid           int
	maildir       string
	probes        int
	probeInterval time.Duration
	probeTimeout  time.Duration
	hold          time.Duration
	maxRSS        int64
	maxProbe      time.Duration
	abortRSS      int64
	rcpt          string
	ehlo          bool   // idle: say EHLO before sitting idle
	reload        string // admin address: reload the server's config once set up
}

func main() {
	os.Exit(run())
}

func run() int {
	var c config
	var sourceBase, probeFrom string
	var maxRSSMiB, abortRSSMiB int64
	flag.StringVar(&c.scenario, "scenario", "data", "data (stalled DATA with a large body) or idle (connect and sit)")
	flag.StringVar(&c.addr, "addr", "127.0.0.1:2525", "server address (loopback only)")
	flag.IntVar(&c.conns, "conns", 0, "connections to open (default: 2000 for data, 10000 for idle)")
	flag.IntVar(&c.sources, "sources", 0, "source addresses, counted up from -source-base (default: 50 for data, 200 for idle)")
	flag.StringVar(&sourceBase, "source-base", "127.0.1.1", "first flood source address")
	flag.StringVar(&probeFrom, "probe-from", "127.0.2.1", "source address of the probe client")
	flag.IntVar(&c.bodySize, "body", 900*1024, "data: body bytes sent before stalling (no final dot)")
	flag.IntVar(&c.concurrency, "concurrency", 200, "connections being set up at once (dial, greeting, commands, body)")
	flag.DurationVar(&c.timeout, "timeout", 120*time.Second, "overall time limit of the scenario")
	flag.DurationVar(&c.stepTimeout, "step-timeout", 20*time.Second, "limit of each read or write while a connection is set up")
	flag.IntVar(&c.pid, "pid", 0, "server process to sample (VmHWM, VmRSS from /proc/PID/status); 0: none")
	flag.StringVar(&c.maildir, "maildir", "", "Maildir of the probe's recipient (checked for the probe messages); empty: not checked")
	flag.IntVar(&c.probes, "probes", 3, "probe messages sent while the flood holds")
	flag.DurationVar(&c.probeInterval, "probe-interval", 5*time.Second, "time between probe starts")
	flag.DurationVar(&c.probeTimeout, "probe-timeout", 15*time.Second, "limit of one probe")
	flag.DurationVar(&c.hold, "hold", 2*time.Second, "extra time the flood holds after the last probe")
	flag.Int64Var(&maxRSSMiB, "max-rss", 300, "goal: server peak RSS below this many MiB")
	flag.DurationVar(&c.maxProbe, "max-probe", 2*time.Second, "goal: each probe's 250 within this time of its connect")
	flag.Int64Var(&abortRSSMiB, "abort-rss", 3072, "abort the scenario when the server's RSS passes this many MiB")
	flag.StringVar(&c.rcpt, "rcpt", "alice@example.test", "recipient of the flood and the probes")
	flag.BoolVar(&c.ehlo, "ehlo", false, "idle: send EHLO, then sit idle (a session, not just a connection)")
	flag.StringVar(&c.reload, "reload", "", "admin address (localhost:2019): once every connection is set up, reload the server's config\n(GET /config/, POST /load), so the peak RSS and the held count show what a reload under the flood costs")
	flag.Parse()

	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "smtpflood: "+format+"\n", args...)
		return 2
	}
	switch c.scenario {
	case "data":
		c.conns = orDefault(c.conns, 2000)
		c.sources = orDefault(c.sources, 50)
	case "idle":
		c.conns = orDefault(c.conns, 10000)
		c.sources = orDefault(c.sources, 200)
	default:
		return fail("unknown -scenario %q (data or idle)", c.scenario)
	}
	var err error
	if c.sourceBase, err = netip.ParseAddr(sourceBase); err != nil || !c.sourceBase.IsLoopback() {
		return fail("-source-base %q: not a loopback address", sourceBase)
	}
	if c.probeFrom, err = netip.ParseAddr(probeFrom); err != nil || !c.probeFrom.IsLoopback() {
		return fail("-probe-from %q: not a loopback address", probeFrom)
	}
	ap, err := netip.ParseAddrPort(c.addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return fail("-addr %q: not a loopback address and port", c.addr)
	}
	if c.conns < 0 || c.conns > 100000 || c.sources < 1 || c.sources > 60000 || c.concurrency < 1 || c.concurrency > 5000 ||
		c.probes < 0 || c.probes > 100 || c.bodySize < 0 || c.bodySize > 64<<20 || c.timeout <= 0 {
		return fail("a count is out of range")
	}
	last := c.sourceBase
	for i := 1; i < c.sources; i++ {
		last = last.Next()
	}
	if !last.IsLoopback() {
		return fail("-sources %d from %s leaves the loopback range", c.sources, c.sourceBase)
	}
	c.maxRSS, c.abortRSS = maxRSSMiB<<20, abortRSSMiB<<20
	raiseNoFile()
	return flood(c)
}

func orDefault(v, d int) int {
	if v == 0 {
		return d
	}
	return v
}

// raiseNoFile raises the soft open-files limit to the hard one (the Go
// runtime does too since 1.19; this says what it got).
func raiseNoFile() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	fmt.Printf("open files limit: %d\n", l.Cur)
}

// stats are the counters of one scenario.
type stats struct {
	attempted, accepted, completed atomic.Int64 // completed: reached the holding state
	holding                        atomic.Int64 // open now, set up
	open                           atomic.Int64 // open now, any state
	bytesSent                      atomic.Int64

	mu       sync.Mutex
	outcomes map[string]int // "refused: greeting 421", "closed: during body", ...
	dropped  map[string]int // connections the server ended while they were held
}

func (s *stats) outcome(k string) {
	s.mu.Lock()
	s.outcomes[k]++
	s.mu.Unlock()
}

func (s *stats) drop(k string) {
	s.mu.Lock()
	s.dropped[k]++
	s.mu.Unlock()
}

func (s *stats) refused() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int
	for k, v := range s.outcomes {
		if strings.HasPrefix(k, "refused") || strings.HasPrefix(k, "closed") || strings.HasPrefix(k, "dial") {
			n += v
		}
	}
	return int64(n)
}

// memory is the sampled server memory.
type memory struct {
	mu         sync.Mutex
	hwm, rss   int64 // bytes
	peakRSS    int64 // highest VmRSS seen (VmHWM is the kernel's own peak)
	samples    int
	gone       bool
	abortedRSS int64
}

func (m *memory) get() (hwm, rss, peak int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hwm, m.rss, m.peakRSS
}

func (m *memory) peak() int64 {
	hwm, _, peak := m.get()
	return max(hwm, peak)
}

func readStatus(pid int) (hwm, rss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok || name != "VmHWM" && name != "VmRSS" {
			continue
		}
		f := strings.Fields(val) // "123456 kB"
		if len(f) == 0 {
			continue
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if name == "VmHWM" {
			hwm = kb << 10
		} else {
			rss = kb << 10
		}
	}
	return hwm, rss, nil
}

type probeResult struct {
	n       int
	latency time.Duration // connect to the 250 after the dot
	err     error
	stored  bool
	file    string
}

func flood(c config) int {
	start := time.Now()
	ctx, cancel := context.WithTimeoutCause(context.Background(), c.timeout, errors.New("overall -timeout reached"))
	defer cancel()
	// holdCtx ends the flood: when the probes are done, at the timeout, or
	// on abort. Connections close when it ends.
	holdCtx, endHold := context.WithCancelCause(ctx)
	defer endHold(nil)

	st := &stats{outcomes: map[string]int{}, dropped: map[string]int{}}
	mem := &memory{}
	fmt.Printf("scenario %s: %d connections from %d sources (%s...), %d at a time, to %s; timeout %s\n",
		c.scenario, c.conns, c.sources, c.sourceBase, c.concurrency, c.addr, c.timeout)
	if c.scenario == "data" {
		fmt.Printf("each: EHLO, MAIL, RCPT %s, DATA, %d bytes of body, no final dot, then held\n", c.rcpt, c.bodySize)
	} else {
		fmt.Printf("each: connect, read the greeting, then held idle\n")
	}

	// Memory sampler.
	var bg sync.WaitGroup
	if c.pid > 0 {
		if _, _, err := readStatus(c.pid); err != nil {
			fmt.Fprintf(os.Stderr, "smtpflood: server pid %d: %v\n", c.pid, err)
			return 2
		}
		bg.Go(func() {
			t := time.NewTicker(250 * time.Millisecond)
			defer t.Stop()
			for {
				hwm, rss, err := readStatus(c.pid)
				mem.mu.Lock()
				if err != nil {
					mem.gone = true
					mem.mu.Unlock()
					endHold(fmt.Errorf("server process %d is gone: %v", c.pid, err))
					return
				}
				mem.hwm, mem.rss, mem.peakRSS = hwm, rss, max(mem.peakRSS, rss)
				mem.samples++
				if rss > c.abortRSS && mem.abortedRSS == 0 {
					mem.abortedRSS = rss
					mem.mu.Unlock()
					endHold(fmt.Errorf("ABORT: server RSS %d MiB passed -abort-rss %d MiB", rss>>20, c.abortRSS>>20))
					return
				}
				mem.mu.Unlock()
				select {
				case <-holdCtx.Done():
					return
				case <-t.C:
				}
			}
		})
	}

	// Progress lines.
	progressDone := make(chan struct{})
	bg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-progressDone:
				return
			case <-t.C:
			}
			printProgress(start, c, st, mem)
		}
	})

	body := makeBody(c.bodySize)

	// Flood: a bounded number of connections, c.concurrency being set up at
	// once; each holds until holdCtx ends.
	var conns sync.WaitGroup
	sem := make(chan struct{}, c.concurrency)
	rampDone := make(chan struct{})
	go func() {
		defer close(rampDone)
		src := c.sourceBase
		for i := 0; i < c.conns; i++ {
			select {
			case sem <- struct{}{}:
			case <-holdCtx.Done():
				return
			}
			st.attempted.Add(1)
			from := src
			conns.Go(func() { floodConn(holdCtx, c, from, body, st, sem) })
			src = src.Next()
			if (i+1)%c.sources == 0 {
				src = c.sourceBase
			}
		}
		// Wait for the last set-ups to finish (or give up).
		for range c.concurrency {
			select {
			case sem <- struct{}{}:
			case <-holdCtx.Done():
				return
			}
		}
	}()

	// The probes start when every connection is set up, or when only the
	// time they need is left.
	probeWindow := time.Duration(max(c.probes-1, 0))*c.probeInterval + c.probeTimeout + c.hold + 2*time.Second
	rampLimit := max(c.timeout-probeWindow, c.timeout/3)
	select {
	case <-rampDone:
		fmt.Printf("%5.1fs all %d connections set up (%d accepted, %d refused or failed)\n",
			since(start), st.attempted.Load(), st.accepted.Load(), st.refused())
	case <-time.After(rampLimit):
		fmt.Printf("%5.1fs set-up still running after %s: probing now\n", since(start), rampLimit)
	case <-holdCtx.Done():
	}

	if c.reload != "" && holdCtx.Err() == nil {
		before := st.holding.Load()
		if err := reloadConfig(c.reload); err != nil {
			endHold(fmt.Errorf("reload: %v", err))
		} else {
			time.Sleep(2 * time.Second) // the old config's stop runs in the background
			fmt.Printf("%5.1fs reloaded the config: holding %d before, %d two seconds after\n",
				since(start), before, st.holding.Load())
		}
	}

	var probes []probeResult
	for i := range c.probes {
		if holdCtx.Err() != nil {
			break
		}
		if i > 0 {
			select {
			case <-time.After(c.probeInterval):
			case <-holdCtx.Done():
			}
			if holdCtx.Err() != nil {
				break
			}
		}
		p := probe(holdCtx, c, i+1)
		probes = append(probes, p)
		if p.err != nil {
			fmt.Printf("%5.1fs probe %d: FAILED after %s: %v\n", since(start), p.n, p.latency.Round(time.Millisecond), p.err)
		} else {
			fmt.Printf("%5.1fs probe %d: 250 after %s, stored: %v %s\n", since(start), p.n, p.latency.Round(time.Millisecond), p.stored, p.file)
		}
	}
	if holdCtx.Err() == nil && c.hold > 0 {
		select {
		case <-time.After(c.hold):
		case <-holdCtx.Done():
		}
	}
	reason := context.Cause(holdCtx)
	if reason == nil {
		reason = errors.New("the probes are done")
	}
	endHold(reason)
	fmt.Printf("%5.1fs closing the flood connections...\n", since(start))
	closed := make(chan struct{})
	go func() { conns.Wait(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		fmt.Println("some flood connections did not end within 30s")
	}
	<-rampDone
	close(progressDone)
	bg.Wait()
	if c.pid > 0 {
		if hwm, rss, err := readStatus(c.pid); err == nil {
			mem.mu.Lock()
			mem.hwm, mem.rss, mem.peakRSS = hwm, rss, max(mem.peakRSS, rss)
			mem.mu.Unlock()
		}
	}
	return summary(c, start, st, mem, probes, reason)
}

// reloadConfig makes the server at admin load its own config again (Cache-Control:
// must-revalidate: Caddy reloads even an unchanged config).
func reloadConfig(admin string) error {
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get("http://" + admin + "/config/")
	if err != nil {
		return err
	}
	cfg, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /config/: %s %v", resp.Status, err)
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+admin+"/load", bytes.NewReader(cfg))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err = client.Do(req)
	if err != nil {
		return err
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /load: %s %s", resp.Status, msg)
	}
	return nil
}

func since(t time.Time) float64 { return time.Since(t).Seconds() }

func printProgress(start time.Time, c config, st *stats, mem *memory) {
	line := fmt.Sprintf("%5.1fs opened %d/%d accepted %d refused %d holding %d open %d sent %s",
		since(start), st.attempted.Load(), c.conns, st.accepted.Load(), st.refused(),
		st.holding.Load(), st.open.Load(), mib(st.bytesSent.Load()))
	if c.pid > 0 {
		hwm, rss, _ := mem.get()
		line += fmt.Sprintf(" | server RSS %s peak %s", mib(rss), mib(hwm))
	}
	fmt.Println(line)
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

// makeBody is a header section and lines of text, about n bytes, CRLF line
// ends, no line starting with a dot.
func makeBody(n int) []byte {
	var b bytes.Buffer
	b.Grow(n + 100)
	b.WriteString("From: <x@flood.test>\r\nTo: <alice@example.test>\r\nSubject: flood\r\n\r\n")
	line := "flood flood flood flood flood flood flood flood flood flood flood flood 0123\r\n"
	for b.Len()+len(line) <= n {
		b.WriteString(line)
	}
	return b.Bytes()
}

// floodConn opens one flood connection from src, sets it up for the
// scenario, releases its set-up slot and holds the connection until ctx
// ends or the server closes it.
func floodConn(ctx context.Context, c config, src netip.Addr, body []byte, st *stats, sem chan struct{}) {
	released := false
	release := func() {
		if !released {
			released = true
			<-sem
		}
	}
	defer release()
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: c.stepTimeout}
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		if ctx.Err() == nil {
			st.outcome("dial failed: " + shortErr(err))
		}
		return
	}
	st.open.Add(1)
	defer st.open.Add(-1)
	// Close the connection when ctx ends, whatever it is doing.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	s := &smtpConn{conn: conn, r: bufio.NewReader(conn), timeout: c.stepTimeout, st: st}

	code, _, err := s.reply()
	switch {
	case err != nil && ctx.Err() != nil:
		return
	case isTimeout(err):
		st.outcome("silent: no greeting within " + c.stepTimeout.String())
		// Still a connection the server holds: keep it.
	case err != nil:
		st.outcome("closed: before the greeting (" + shortErr(err) + ")")
		return
	case code != 220:
		st.outcome(fmt.Sprintf("refused: greeting %d", code))
		return
	default:
		st.accepted.Add(1)
	}

	if c.scenario == "data" && err == nil {
		steps := []struct {
			name, cmd string
			want      int
		}{
			{"EHLO", "EHLO flood.test", 250},
			{"MAIL", "MAIL FROM:<x@flood.test>", 250},
			{"RCPT", "RCPT TO:<" + c.rcpt + ">", 250},
			{"DATA", "DATA", 354},
		}
		for _, step := range steps {
			code, _, err := s.cmd(step.cmd)
			if err != nil {
				if ctx.Err() == nil {
					st.outcome("closed: after " + step.name + " (" + shortErr(err) + ")")
				}
				return
			}
			if code != step.want {
				st.outcome(fmt.Sprintf("refused: %s %d", step.name, code))
				return
			}
		}
		if err := s.writeBody(body); err != nil {
			if ctx.Err() != nil {
				return
			}
			if isTimeout(err) {
				// The server stopped reading: the connection stays, stalled.
				st.outcome("stalled: server stopped reading the body")
			} else {
				// Closed mid-body: the server may have said why.
				conn.SetReadDeadline(time.Now().Add(time.Second))
				if code, _, rerr := s.reply(); rerr == nil {
					st.outcome(fmt.Sprintf("refused: during body %d", code))
				} else {
					st.outcome("closed: during body (" + shortErr(err) + ")")
				}
				return
			}
		} else {
			st.outcome("held: body sent, no final dot")
		}
	} else if err == nil && c.ehlo {
		if code, _, err := s.cmd("EHLO flood.test"); err != nil || code != 250 {
			st.outcome(fmt.Sprintf("refused: EHLO %d", code))
			return
		}
		st.outcome("held: idle after EHLO")
	} else if err == nil {
		st.outcome("held: idle after the greeting")
	}

	st.completed.Add(1)
	st.holding.Add(1)
	defer st.holding.Add(-1)
	release()
	// Hold: wait for ctx to end or for the server to speak or close.
	conn.SetDeadline(time.Time{})
	s.timeout = 0
	code, text, err := s.reply()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		st.drop("closed (" + shortErr(err) + ")")
	} else {
		st.drop(fmt.Sprintf("reply %d %s", code, firstWords(text, 4)))
	}
}

func firstWords(s string, n int) string {
	f := strings.Fields(s)
	if len(f) > n {
		f = f[:n]
	}
	return strings.Join(f, " ")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func shortErr(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too many open files (client)"
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE):
		return "no local port (client)"
	case isTimeout(err):
		return "timeout"
	}
	return err.Error()
}

// smtpConn is a minimal SMTP client over one connection.
type smtpConn struct {
	conn    net.Conn
	r       *bufio.Reader
	timeout time.Duration
	st      *stats // bytes sent; nil for the probe
}

// reply reads one (possibly multi-line) reply, at most 100 lines of 4096
// bytes. A zero s.timeout leaves the deadline as it is (also in write).
func (s *smtpConn) reply() (code int, text string, err error) {
	if s.timeout > 0 {
		s.conn.SetReadDeadline(time.Now().Add(s.timeout))
	}
	var lines []string
	for range 100 {
		line, err := s.r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return 0, "", errors.New("reply line too long")
			}
			return 0, "", err
		}
		l := strings.TrimRight(string(line), "\r\n")
		if len(l) < 3 {
			return 0, "", fmt.Errorf("bad reply line %q", l)
		}
		code, err = strconv.Atoi(l[:3])
		if err != nil {
			return 0, "", fmt.Errorf("bad reply line %q", l)
		}
		lines = append(lines, strings.TrimSpace(l[min(4, len(l)):]))
		if len(l) == 3 || l[3] != '-' {
			return code, strings.Join(lines, " "), nil
		}
	}
	return 0, "", errors.New("reply too long")
}

func (s *smtpConn) write(p []byte) error {
	if s.timeout > 0 {
		s.conn.SetWriteDeadline(time.Now().Add(s.timeout))
	}
	n, err := s.conn.Write(p)
	if s.st != nil {
		s.st.bytesSent.Add(int64(n))
	}
	return err
}

func (s *smtpConn) cmd(line string) (int, string, error) {
	if err := s.write([]byte(line + "\r\n")); err != nil {
		return 0, "", err
	}
	return s.reply()
}

// writeBody writes body in 32 KiB pieces, each with its own deadline
// (when s.timeout is set).
func (s *smtpConn) writeBody(body []byte) error {
	for len(body) > 0 {
		n := min(len(body), 32<<10)
		if err := s.write(body[:n]); err != nil {
			return err
		}
		body = body[n:]
	}
	return nil
}

// probe sends one complete message from c.probeFrom and times it from
// the connect to the 250 after the final dot, then checks the Maildir.
func probe(ctx context.Context, c config, n int) (res probeResult) {
	res.n = n
	ctx, cancel := context.WithTimeout(ctx, c.probeTimeout)
	defer cancel()
	token := fmt.Sprintf("smtpflood-probe-%d-%d-%d", os.Getpid(), time.Now().UnixNano(), n)
	t0 := time.Now()
	defer func() {
		if res.latency == 0 {
			res.latency = time.Since(t0)
		}
	}()
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(c.probeFrom, 0))}
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		res.err = fmt.Errorf("dial: %w", err)
		return res
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	s := &smtpConn{conn: conn, r: bufio.NewReader(conn)}
	expect := func(step string, want int, code int, text string, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", step, err)
		}
		if code != want {
			return fmt.Errorf("%s: %d %s", step, code, text)
		}
		return nil
	}
	code, text, err := s.reply()
	if res.err = expect("greeting", 220, code, text, err); res.err != nil {
		return res
	}
	for _, step := range []struct {
		cmd  string
		want int
	}{
		{"EHLO probe.flood.test", 250},
		{"MAIL FROM:<probe@flood.test>", 250},
		{"RCPT TO:<" + c.rcpt + ">", 250},
		{"DATA", 354},
	} {
		code, text, err := s.cmd(step.cmd)
		if res.err = expect(strings.Fields(step.cmd)[0], step.want, code, text, err); res.err != nil {
			return res
		}
	}
	msg := "From: <probe@flood.test>\r\nTo: <" + c.rcpt + ">\r\nSubject: " + token + "\r\nMessage-ID: <" + token + "@flood.test>\r\n\r\nprobe " + token + "\r\n.\r\n"
	code, text, err = s.cmd(strings.TrimSuffix(msg, "\r\n"))
	if res.err = expect("end of DATA", 250, code, text, err); res.err != nil {
		return res
	}
	res.latency = time.Since(t0)
	s.cmd("QUIT")
	if c.maildir != "" {
		res.file, res.stored = findToken(c.maildir, token)
		if !res.stored {
			res.err = fmt.Errorf("250 but no file with %s in %s", token, c.maildir)
		}
	}
	return res
}

// findToken looks for a message file in maildir/new (and cur) holding token;
// at most 10000 files are read.
func findToken(maildir, token string) (string, bool) {
	seen := 0
	for _, sub := range []string{"new", "cur"} {
		dir := filepath.Join(maildir, sub)
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if seen++; seen > 10000 {
				return "", false
			}
			if !e.Type().IsRegular() {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err == nil && bytes.Contains(b, []byte(token)) {
				return filepath.Join(sub, e.Name()), true
			}
		}
	}
	return "", false
}

func summary(c config, start time.Time, st *stats, mem *memory, probes []probeResult, reason error) int {
	fmt.Printf("\n=== summary: scenario %s (%s) ===\n", c.scenario, time.Since(start).Round(100*time.Millisecond))
	fmt.Printf("flood ended by: %v\n", reason)
	fmt.Printf("connections attempted: %d  accepted (220): %d  set up and held: %d  refused or failed: %d\n",
		st.attempted.Load(), st.accepted.Load(), st.completed.Load(), st.refused())
	st.mu.Lock()
	printCounts("outcomes", st.outcomes)
	printCounts("ended by the server while held", st.dropped)
	st.mu.Unlock()
	fmt.Printf("bytes sent: %d (%s)\n", st.bytesSent.Load(), mib(st.bytesSent.Load()))

	var failures []string
	if c.pid > 0 {
		hwm, rss, peak := mem.get()
		fmt.Printf("server memory: peak RSS (VmHWM) %s, highest sampled VmRSS %s, VmRSS at the end %s (%d samples)\n",
			mib(hwm), mib(peak), mib(rss), mem.samples)
		if p := mem.peak(); p >= c.maxRSS {
			failures = append(failures, fmt.Sprintf("peak RSS %s >= %s", mib(p), mib(c.maxRSS)))
		}
		if mem.abortedRSS > 0 {
			failures = append(failures, fmt.Sprintf("aborted: RSS %s passed %s", mib(mem.abortedRSS), mib(c.abortRSS)))
		}
		if mem.gone {
			failures = append(failures, "the server process exited during the flood")
		}
	} else {
		fmt.Println("server memory: not sampled (no -pid)")
	}
	for _, p := range probes {
		status := "ok"
		switch {
		case p.err != nil:
			status = "FAILED: " + p.err.Error()
			failures = append(failures, fmt.Sprintf("probe %d failed: %v", p.n, p.err))
		case p.latency > c.maxProbe:
			status = "slow"
			failures = append(failures, fmt.Sprintf("probe %d took %s > %s", p.n, p.latency.Round(time.Millisecond), c.maxProbe))
		}
		fmt.Printf("probe %d: %s to the 250, stored %v: %s\n", p.n, p.latency.Round(time.Millisecond), p.stored, status)
	}
	if len(probes) < c.probes {
		failures = append(failures, fmt.Sprintf("only %d of %d probes ran", len(probes), c.probes))
	}
	if len(failures) == 0 {
		fmt.Printf("RESULT %s: PASS (peak RSS < %s, every probe's 250 within %s)\n", c.scenario, mib(c.maxRSS), c.maxProbe)
		return 0
	}
	fmt.Printf("RESULT %s: FAIL\n", c.scenario)
	for _, f := range failures {
		fmt.Printf("  - %s\n", f)
	}
	return 1
}

func printCounts(title string, m map[string]int) {
	if len(m) == 0 {
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	fmt.Printf("%s:\n", title)
	for _, k := range keys {
		fmt.Printf("  %7d  %s\n", m[k], k)
	}
}
