package milter

import (
	"fmt"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/emersion/go-milter"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/abusetest"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/adapttest"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"
)

type setup struct {
	env  *testenv.Env
	addr string
}

func start(t *testing.T, handlers ...any) *setup {
	t.Helper()
	for _, h := range handlers {
		h.(map[string]any)["handler"] = "milter"
	}
	d := testenv.StartDNS(t)
	s := &setup{env: testenv.New(t), addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}
	s.env.Load(s.env.Config(testenv.SpamMXApp(s.env, s.addr, d.Addr, handlers...), nil))
	return s
}

func (s *setup) stored(t *testing.T) []string {
	return testenv.MaildirTexts(t, s.env.Path("maildir"), "example.test", "alice", "alice/.Junk")
}

const message = "From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: hello\r\n" +
	"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.test>\r\nX-Drop: me\r\nX-Change: old\r\n\r\nHello Alice,\r\nthis is a test.\r\n"

// send sends message; it returns the reply to RCPT if that is not a
// 250, else the reply to the end of DATA.
func (s *setup) send(t *testing.T) testenv.Reply {
	t.Helper()
	c, g := testenv.DialFrom(t, "127.0.0.1", s.addr)
	if g.Code != 220 {
		return g
	}
	c.Expect("EHLO client.example.org", 250)
	if r := c.Cmd("MAIL FROM:<bob@example.org>"); r.Code != 250 {
		return r
	}
	if r := c.Cmd("RCPT TO:<alice@example.test>"); r.Code != 250 {
		return r
	}
	c.Expect("DATA", 354)
	c.Send(message + ".\r\n")
	r := c.Read()
	c.Cmd("QUIT")
	return r
}

// testMilter is a real milter speaking the protocol (go-milter's server
// side), whose answers the test chooses.
type testMilter struct {
	milter.NoOpMilter
	rcpt    milter.Response
	body    milter.Response
	delay   time.Duration
	modify  func(m *milter.Modifier)
	mu      *sync.Mutex
	headers *[]string
}

func (tm *testMilter) RcptTo(string, *milter.Modifier) (milter.Response, error) {
	if tm.rcpt != nil {
		return tm.rcpt, nil
	}
	return milter.RespContinue, nil
}

func (tm *testMilter) Header(name, value string, _ *milter.Modifier) (milter.Response, error) {
	tm.mu.Lock()
	*tm.headers = append(*tm.headers, name+": "+value)
	tm.mu.Unlock()
	return milter.RespContinue, nil
}

func (tm *testMilter) Headers(textproto.MIMEHeader, *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

func (tm *testMilter) Body(m *milter.Modifier) (milter.Response, error) {
	time.Sleep(tm.delay)
	if tm.modify != nil {
		tm.modify(m)
	}
	if tm.body != nil {
		return tm.body, nil
	}
	return milter.RespAccept, nil
}

// serve starts a milter server on a free loopback port; its address in
// Postfix notation.
func serve(t *testing.T, tm testMilter) (addr string, headers func() []string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	tm.mu, tm.headers = &mu, &seen
	srv := &milter.Server{
		NewMilter: func() milter.Milter { c := tm; return &c },
		Actions:   milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine,
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return fmt.Sprintf("inet:%d@127.0.0.1", l.Addr().(*net.TCPAddr).Port), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

func TestRejectAtRcpt(t *testing.T) {
	addr, _ := serve(t, testMilter{rcpt: milter.RespReject})
	s := start(t, map[string]any{"address": addr})
	r := s.send(t)
	if r.Code != 550 || !strings.Contains(r.Text(), "5.7.1") {
		t.Fatalf("RCPT: %s", r)
	}
	if v := abusetest.MetricValue(t, s.env, "caddy_smtp_milter_actions_total", `stage="rcpt"`, `action="reject"`); v != 1 {
		t.Errorf("metric = %v", v)
	}
}

func TestReplyCodeAtRcpt(t *testing.T) {
	addr, _ := serve(t, testMilter{rcpt: milter.NewResponseStr(byte(milter.ActReplyCode), "553 5.1.8 Sender refused here")})
	s := start(t, map[string]any{"address": addr})
	if r := s.send(t); r.Code != 553 || !strings.Contains(r.Text(), "5.1.8 Sender refused here") {
		t.Fatalf("RCPT: %s", r)
	}
}

func TestTempfailAtEndOfBody(t *testing.T) {
	addr, _ := serve(t, testMilter{body: milter.RespTempFail})
	s := start(t, map[string]any{"address": addr})
	if r := s.send(t); r.Code != 451 || !strings.Contains(r.Text(), "4.7.1") {
		t.Fatalf("end of body: %s", r)
	}
	if got := s.stored(t); len(got) != 0 {
		t.Fatalf("stored: %q", got)
	}
}

// TestDiscard: a milter's discard, at RCPT or at the end of the body, is
// acknowledged (250) and the message dropped unseen, as Postfix does.
func TestDiscard(t *testing.T) {
	for _, tm := range []testMilter{{body: milter.RespDiscard}, {rcpt: milter.RespDiscard}} {
		addr, _ := serve(t, tm)
		s := start(t, map[string]any{"address": addr})
		if r := s.send(t); r.Code != 250 {
			t.Fatalf("discarded message: %s", r)
		}
		if got := s.stored(t); len(got) != 0 {
			t.Fatalf("a discarded message was stored: %q", got)
		}
	}
}

// TestRecipientChanges: a milter adds a local recipient and removes the
// original one: the message goes to the added mailbox only; an added
// remote recipient from a client that may not relay is not added.
func TestRecipientChanges(t *testing.T) {
	addr, _ := serve(t, testMilter{modify: func(m *milter.Modifier) {
		m.AddRecipient("<bob@example.test>")
		m.AddRecipient("<someone@elsewhere.example>") // relay denied: not added
		m.DeleteRecipient("<alice@example.test>")
	}})
	d := testenv.StartDNS(t)
	s := &setup{env: testenv.New(t), addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}
	app := testenv.SpamMXApp(s.env, s.addr, d.Addr, map[string]any{"handler": "milter", "address": addr})
	accounts := app["accounts"].(map[string]any)
	accounts["accounts"] = append(accounts["accounts"].([]any), map[string]any{"address": "bob@example.test"})
	s.env.Load(s.env.Config(app, nil))
	if r := s.send(t); r.Code != 250 {
		t.Fatalf("end of data: %s", r)
	}
	if got := s.stored(t); len(got) != 0 {
		t.Fatalf("the removed recipient got the message: %q", got)
	}
	if got := testenv.Maildir(t, s.env.Path("maildir"), "example.test", "bob"); len(got) != 1 {
		t.Fatalf("the added recipient got %d messages", len(got))
	}
}

func TestModificationsAndQuarantine(t *testing.T) {
	addr, headers := serve(t, testMilter{modify: func(m *milter.Modifier) {
		m.AddHeader("X-Added", "bottom")
		m.InsertHeader(0, "X-Inserted", "top")
		m.ChangeHeader(1, "X-Change", "new")
		m.ChangeHeader(1, "X-Drop", "")
		m.Quarantine("looks bad")
	}})
	s := start(t, map[string]any{"address": addr})
	if r := s.send(t); r.Code != 250 {
		t.Fatalf("DATA: %s", r)
	}
	got := s.stored(t)
	if len(got) != 1 {
		t.Fatalf("stored %d", len(got))
	}
	m := got[0]
	for _, want := range []string{"X-Inserted: top\r\nFrom: Bob", "X-Change: new\r\nX-Added: bottom\r\n\r\nHello", "quarantined by milter"} {
		if !strings.Contains(m, want) {
			t.Errorf("lacks %q:\n%s", want, m)
		}
	}
	if strings.Contains(m, "X-Drop") {
		t.Errorf("X-Drop not deleted:\n%s", m)
	}
	if n := len(testenv.Maildir(t, s.env.Path("maildir"), "example.test", "alice/.Junk")); n != 1 {
		t.Errorf("quarantined message not in Junk")
	}
	if h := headers(); len(h) != 7 || h[2] != "Subject: hello" {
		t.Errorf("milter saw headers %q", h)
	}
}

func TestTimeoutPolicy(t *testing.T) {
	for _, tc := range []struct {
		policy string
		code   int
	}{{"tempfail", 451}, {"reject", 550}, {"accept", 250}} {
		t.Run(tc.policy, func(t *testing.T) {
			addr, _ := serve(t, testMilter{delay: 3 * time.Second})
			s := start(t, map[string]any{"address": addr, "timeout": "500ms", "on_failure": tc.policy})
			started := time.Now()
			r := s.send(t)
			if r.Code != tc.code || time.Since(started) > 2500*time.Millisecond {
				t.Fatalf("reply %s after %v, want %d", r, time.Since(started), tc.code)
			}
			if v := abusetest.MetricValue(t, s.env, "caddy_smtp_milter_failures_total", `stage="data"`, `policy="`+tc.policy+`"`); v != 1 {
				t.Errorf("failures metric = %v", v)
			}
		})
	}
}

func TestMilterDown(t *testing.T) {
	port := testenv.FreePort(t)
	s := start(t, map[string]any{"address": fmt.Sprintf("127.0.0.1:%d", port)})
	r := s.send(t) // the failure at connect refuses MAIL
	if r.Code != 451 {
		t.Fatalf("milter down: %s", r)
	}
}

// TestOpenDKIM signs with a real OpenDKIM (Debian packages opendkim and
// opendkim-tools), started on a free loopback port with its config and a
// fresh key in a temporary folder, and stopped by PID.
func TestOpenDKIM(t *testing.T) {
	bin, err1 := exec.LookPath("opendkim")
	genkey, err2 := exec.LookPath("opendkim-genkey")
	if err1 != nil || err2 != nil {
		if os.Getenv("CI") == "" {
			t.Skip("opendkim and opendkim-genkey are not installed (apt-get install opendkim opendkim-tools); skipped outside CI")
		}
		t.Fatal("opendkim is not installed: CI must install it (.ci/run)")
	}
	dir := t.TempDir()
	if out, err := exec.Command(genkey, "-D", dir, "-d", "example.test", "-s", "test").CombinedOutput(); err != nil {
		t.Fatalf("opendkim-genkey: %v %s", err, out)
	}
	port := testenv.FreePort(t)
	conf := fmt.Sprintf(`Syslog no
Socket inet:%d@127.0.0.1
Domain example.test
Selector test
KeyFile %s/test.private
Mode s
Canonicalization relaxed/relaxed
InternalHosts 127.0.0.1
PidFile %s/opendkim.pid
RequireSafeKeys no
`, port, dir, dir)
	os.WriteFile(filepath.Join(dir, "opendkim.conf"), []byte(conf), 0o644)
	cmd := exec.Command(bin, "-f", "-x", filepath.Join(dir, "opendkim.conf"))
	out, _ := os.Create(filepath.Join(dir, "out.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	if !testenv.WaitFor(10*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		log, _ := os.ReadFile(filepath.Join(dir, "out.log"))
		t.Fatalf("opendkim did not start: %s", log)
	}
	s := start(t, map[string]any{"address": fmt.Sprintf("inet:%d@127.0.0.1", port), "name": "opendkim"})
	if r := s.send(t); r.Code != 250 {
		t.Fatalf("DATA: %s", r)
	}
	got := s.stored(t)
	if len(got) != 1 || !strings.Contains(got[0], "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;") ||
		!strings.Contains(got[0], "s=test") {
		t.Fatalf("no DKIM-Signature:\n%q", got)
	}
}

func TestParseAddress(t *testing.T) {
	for in, want := range map[string]string{
		"inet:8891@127.0.0.1":   "tcp 127.0.0.1:8891",
		"inet6:8891@[::1]":      "tcp [::1]:8891",
		"unix:/run/milter.s":    "unix /run/milter.s",
		"local:/run/milter.s":   "unix /run/milter.s",
		"tcp://127.0.0.1:11332": "tcp 127.0.0.1:11332",
		"localhost:8891":        "tcp localhost:8891",
	} {
		n, a, err := ParseAddress(in)
		if err != nil || n+" "+a != want {
			t.Errorf("%s: %s %s %v, want %s", in, n, a, err, want)
		}
	}
	for _, bad := range []string{"", "inet:x@h", "unix:", "host", "h:0", ":25"} {
		if _, _, err := ParseAddress(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	adapttest.Run(t, func() caddyfile.Unmarshaler { return new(Milter) },
		"milter",
		"milter a b",
		"milter inet:1@h {\n\ton_failure maybe\n}",
		"milter inet:1@h {\n\tbogus\n}",
	)
}
