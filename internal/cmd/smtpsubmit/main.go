// Command smtpsubmit is a small load client for message submission: it
// sends -messages messages of -size bytes over -sessions parallel SMTP
// sessions to -addr, each session doing STARTTLS (unless -starttls=false)
// and AUTH PLAIN (when -user is given), then up to -per-conn messages
// before QUIT and a new connection. smtp-source cannot do STARTTLS or AUTH;
// this tool can, so that submission is measured the way mail clients use it.
//
// It is not a test: scripts/bench-vs-postfix.sh runs it against our
// submission server and against a Postfix instance.
//
//	go run ./internal/cmd/smtpsubmit -addr 127.0.0.1:2587 \
//		-user alice@example.test -pass demo-alice \
//		-ca-file data/caddy/pki/authorities/local/root.crt \
//		-server-name mail.example.test -to someone@remote.test
//
// It prints the messages acknowledged (250 after the final dot), the
// failures, messages/s from the first connection to the last 250, and the
// p50/p99/max latency from sending the final dot to its 250. The last line is
// key=value pairs for scripts. A message that fails is not retried. Every
// loop is bounded: by the message count, by -timeout for the whole run and
// -step-timeout for each connection setup and each transaction. Exit
// status 1 if a message was not acknowledged, 2 on bad flags.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net"
	"net/smtp"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type config struct {
	addr, user, pass, from, to string
	sessions, messages, size   int
	perConn                    int
	starttls, insecure         bool
	caFile, serverName, helo   string
	timeout, stepTimeout       time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.addr, "addr", "127.0.0.1:2587", "server host:port")
	flag.StringVar(&c.user, "user", "", "AUTH PLAIN user name (none: no AUTH)")
	flag.StringVar(&c.pass, "pass", "", "AUTH PLAIN password")
	flag.StringVar(&c.from, "from", "", "envelope and header sender (default: -user)")
	flag.StringVar(&c.to, "to", "someone@remote.test", "recipient")
	flag.IntVar(&c.sessions, "sessions", 20, "parallel sessions")
	flag.IntVar(&c.messages, "messages", 1000, "messages in all")
	flag.IntVar(&c.size, "size", 4096, "body bytes per message")
	flag.IntVar(&c.perConn, "per-conn", 100, "messages per connection before QUIT")
	flag.BoolVar(&c.starttls, "starttls", true, "STARTTLS before AUTH and mail")
	flag.BoolVar(&c.insecure, "insecure-skip-verify", false, "do not verify the server certificate")
	flag.StringVar(&c.caFile, "ca-file", "", "PEM roots to verify the server certificate with (default: system roots)")
	flag.StringVar(&c.serverName, "server-name", "", "name to verify the certificate for (default: host of -addr)")
	flag.StringVar(&c.helo, "helo", "client.example.test", "EHLO name")
	flag.DurationVar(&c.timeout, "timeout", 10*time.Minute, "limit for the whole run")
	flag.DurationVar(&c.stepTimeout, "step-timeout", 60*time.Second, "limit for a connection setup or one transaction")
	flag.Parse()
	if c.from == "" {
		c.from = c.user
	}
	if c.from == "" || c.sessions < 1 || c.messages < 1 || c.size < 0 || c.perConn < 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "smtpsubmit: need -from or -user, -sessions, -messages, -per-conn >= 1 and -size >= 0")
		os.Exit(2)
	}
	tlsConf, err := c.tlsConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "smtpsubmit:", err)
		os.Exit(2)
	}
	os.Exit(run(c, tlsConf))
}

// tlsConfig is the client TLS config from -ca-file, -server-name and
// -insecure-skip-verify.
func (c config) tlsConfig() (*tls.Config, error) {
	host, _, err := net.SplitHostPort(c.addr)
	if err != nil {
		return nil, fmt.Errorf("-addr: %v", err)
	}
	t := &tls.Config{ServerName: host, InsecureSkipVerify: c.insecure}
	if c.serverName != "" {
		t.ServerName = c.serverName
	}
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, err
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-ca-file %s: no certificate", c.caFile)
		}
	}
	return t, nil
}

// run sends the messages and prints the report; it returns the exit status.
func run(c config, tlsConf *tls.Config) int {
	var (
		next      atomic.Int64 // messages handed out
		ok, fail  atomic.Int64
		setupErrs atomic.Int64 // connections that failed before a message
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, c.messages)
		firstErr  error
		wg        sync.WaitGroup
	)
	deadline := time.Now().Add(c.timeout)
	body := message(c)
	start := time.Now()
	for w := 0; w < c.sessions; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A session that fails to connect 3 times in a row gives up.
			for failures := 0; failures < 3 && time.Now().Before(deadline); {
				lat, sent, err := session(c, tlsConf, body, &next, deadline)
				ok.Add(int64(len(lat)))
				fail.Add(int64(sent - len(lat)))
				mu.Lock()
				latencies = append(latencies, lat...)
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				if err == nil && sent == 0 {
					return // no message left
				}
				if err != nil && sent == 0 {
					setupErrs.Add(1)
				}
				if len(lat) == 0 {
					failures++
				} else {
					failures = 0
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	unsent := int64(c.messages) - ok.Load() - fail.Load()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	p50, p99, top := pct(latencies, 0.50), pct(latencies, 0.99), pct(latencies, 1)
	fmt.Printf("acknowledged %d of %d messages (%d failed, %d not sent) in %.2fs: %.0f messages/s; 250 after the final dot: p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
		ok.Load(), c.messages, fail.Load(), unsent, secs, float64(ok.Load())/secs, ms(p50), ms(p99), ms(top))
	if firstErr != nil {
		fmt.Printf("%d connection setups failed (then retried); first error: %v\n", setupErrs.Load(), firstErr)
	}
	fmt.Printf("ok=%d failed=%d seconds=%.3f rate=%.1f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
		ok.Load(), fail.Load()+unsent, secs, float64(ok.Load())/secs, ms(p50), ms(p99), ms(top))
	if ok.Load() != int64(c.messages) {
		return 1
	}
	return 0
}

// session opens one connection and sends up to -per-conn messages on it,
// taking each from next. It returns the latency of each acknowledged
// message, how many it tried, and the error that ended it (nil when it
// sent its share or none was left).
func session(c config, tlsConf *tls.Config, body []byte, next *atomic.Int64, deadline time.Time) ([]time.Duration, int, error) {
	if next.Load() >= int64(c.messages) {
		return nil, 0, nil
	}
	conn, err := net.DialTimeout("tcp", c.addr, c.stepTimeout)
	if err != nil {
		return nil, 0, err
	}
	defer conn.Close()
	step := func() { conn.SetDeadline(minTime(time.Now().Add(c.stepTimeout), deadline)) }
	step()
	host, _, _ := net.SplitHostPort(c.addr)
	cl, err := smtp.NewClient(conn, host)
	if err != nil {
		return nil, 0, err
	}
	if err := cl.Hello(c.helo); err != nil {
		return nil, 0, err
	}
	if c.starttls {
		if err := cl.StartTLS(tlsConf); err != nil {
			return nil, 0, fmt.Errorf("STARTTLS: %w", err)
		}
	}
	if c.user != "" {
		if err := cl.Auth(smtp.PlainAuth("", c.user, c.pass, host)); err != nil {
			return nil, 0, fmt.Errorf("AUTH: %w", err)
		}
	}
	var lat []time.Duration
	sent := 0
	for sent < c.perConn && time.Now().Before(deadline) {
		seq := next.Add(1)
		if seq > int64(c.messages) {
			break
		}
		sent++
		step()
		d, err := transaction(cl, c, header(c, seq), body)
		if err != nil {
			return lat, sent, err
		}
		lat = append(lat, d)
	}
	step()
	cl.Quit()
	return lat, sent, nil
}

// transaction sends one message and returns the time from writing the
// final dot to its 250.
func transaction(cl *smtp.Client, c config, hdr, body []byte) (time.Duration, error) {
	if err := cl.Mail(c.from); err != nil {
		return 0, fmt.Errorf("MAIL: %w", err)
	}
	if err := cl.Rcpt(c.to); err != nil {
		return 0, fmt.Errorf("RCPT: %w", err)
	}
	w, err := cl.Data()
	if err != nil {
		return 0, fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(hdr); err != nil {
		return 0, fmt.Errorf("DATA header: %w", err)
	}
	if _, err := w.Write(body); err != nil {
		return 0, fmt.Errorf("DATA body: %w", err)
	}
	t := time.Now()
	if err := w.Close(); err != nil { // the final dot, then the reply
		return 0, fmt.Errorf("end of DATA: %w", err)
	}
	return time.Since(t), nil
}

// header is a message's header, with a Message-ID unique to seq.
func header(c config, seq int64) []byte {
	return fmt.Appendf(nil, "From: <%s>\r\nTo: <%s>\r\nSubject: smtpsubmit load test\r\nDate: %s\r\nMessage-ID: <%d.%d.smtpsubmit@%s>\r\n\r\n",
		c.from, c.to, time.Now().Format(time.RFC1123Z), seq, os.Getpid(), domainOf(c.from))
}

// message is a body of about -size bytes in 76-character lines, the same
// for every message.
func message(c config) []byte {
	var b strings.Builder
	line := strings.Repeat("x", 74) + "\r\n"
	for n := 0; n < c.size; n += len(line) {
		b.WriteString(line)
	}
	return []byte(b.String())
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[i+1:]
	}
	return "localhost"
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(p*float64(len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
