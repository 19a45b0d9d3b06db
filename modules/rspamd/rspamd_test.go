package rspamd

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/abusetest"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/adapttest"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"
)

// A real rspamd, started once for the package's tests with a minimal
// config in a temporary folder (only a normal worker, on a free loopback
// port; no Redis, no controller, DNS pointed at a closed port), and
// stopped by PID when the tests end.
var (
	rspamdOnce sync.Once
	rspamdURL  string
	rspamdErr  error
	rspamdStop func()
)

func TestMain(m *testing.M) {
	code := m.Run()
	if rspamdStop != nil {
		rspamdStop()
	}
	os.Exit(code)
}

// needRspamd returns the test rspamd's URL. Without the rspamd binary the
// test is skipped, except in CI (CI set), where it fails.
func needRspamd(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("rspamd")
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("rspamd is not installed (apt-get install rspamd); skipped outside CI")
		}
		t.Fatal("rspamd is not installed: CI must install it (.ci/run)")
	}
	rspamdOnce.Do(func() { rspamdURL, rspamdErr = startRspamd(bin) })
	if rspamdErr != nil {
		t.Fatalf("starting rspamd: %v", rspamdErr)
	}
	return rspamdURL
}

func startRspamd(bin string) (string, error) {
	dir, err := os.MkdirTemp("", "rspamd-test-*")
	if err != nil {
		return "", err
	}
	l, err := newFreePort()
	if err != nil {
		return "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", l)
	conf := fmt.Sprintf(`.include "$CONFDIR/common.conf"
options {
    pidfile = "%[1]s/rspamd.pid";
    .include "$CONFDIR/options.inc"
    dns { nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }
}
logging { type = "file"; filename = "%[1]s/rspamd.log"; level = "warning"; }
worker "normal" {
    bind_socket = "%[2]s";
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}
`, dir, addr)
	if err := os.WriteFile(filepath.Join(dir, "rspamd.conf"), []byte(conf), 0o644); err != nil {
		return "", err
	}
	// Thresholds out of reach for a plain test message (the DNS checks
	// all fail here, which scores); GTUBE is a reject whatever they are.
	os.MkdirAll(filepath.Join(dir, "local.d"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "local.d", "actions.conf"),
		[]byte("greylist = 50;\nadd_header = 60;\nrewrite_subject = 70;\nreject = 150;\n"), 0o644); err != nil {
		return "", err
	}
	args := []string{"-f", "-c", filepath.Join(dir, "rspamd.conf"),
		"--var", "DBDIR=" + dir, "--var", "RUNDIR=" + dir, "--var", "LOCAL_CONFDIR=" + dir, "--var", "LOGDIR=" + dir}
	if os.Geteuid() == 0 {
		args = append(args, "-i", "-u", "root", "-g", "root")
	}
	cmd := exec.Command(bin, args...)
	out, _ := os.Create(filepath.Join(dir, "stdout.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	rspamdStop = func() {
		cmd.Process.Signal(syscall.SIGTERM) // the main process stops its workers
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		os.RemoveAll(dir)
	}
	url := "http://" + addr
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(dir, "stdout.log"))
			return "", fmt.Errorf("rspamd exited: %s", log)
		default:
		}
		if resp, err := http.Get(url + "/ping"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return url, nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return "", fmt.Errorf("rspamd did not answer on %s in time", addr)
}

func newFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

type setup struct {
	env  *testenv.Env
	addr string
}

func start(t *testing.T, handler map[string]any) *setup {
	t.Helper()
	handler["handler"] = "rspamd"
	d := testenv.StartDNS(t)
	s := &setup{env: testenv.New(t), addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}
	s.env.Load(s.env.Config(testenv.SpamMXApp(s.env, s.addr, d.Addr, handler), nil))
	return s
}

// send sends raw and returns the reply to the end of DATA.
func (s *setup) send(t *testing.T, raw string) testenv.Reply {
	t.Helper()
	c, _ := testenv.DialFrom(t, "127.0.0.1", s.addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("someone@example.org", "alice@example.test")
	c.Send(raw + ".\r\n")
	r := c.Read()
	c.Cmd("QUIT")
	return r
}

// stored returns the messages stored for alice (inbox and Junk).
func (s *setup) stored(t *testing.T) []string {
	return testenv.MaildirTexts(t, s.env.Path("maildir"), "example.test", "alice", "alice/.Junk")
}

const gtube = "From: a@example.org\r\nTo: alice@example.test\r\nSubject: test\r\nMessage-ID: <gtube@example.org>\r\n\r\n" +
	"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"

const normal = "From: Someone <someone@example.org>\r\nTo: alice@example.test\r\nSubject: hello\r\nX-Spam: yes\r\n" +
	"Message-ID: <1@example.org>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\nHello Alice,\r\nthis is a test.\r\n"

func TestRealRspamdGTUBE(t *testing.T) {
	url := needRspamd(t)
	s := start(t, map[string]any{"url": url})
	r := s.send(t, gtube)
	if r.Code != 550 || !strings.Contains(r.Text(), "5.7.1") || !strings.Contains(r.Text(), "Gtube pattern") {
		t.Fatalf("GTUBE: %s", r)
	}
	if got := s.stored(t); len(got) != 0 {
		t.Fatalf("GTUBE stored: %q", got)
	}
	if v := abusetest.MetricValue(t, s.env, "caddy_smtp_rspamd_checks_total", `action="reject"`); v < 1 {
		t.Errorf("checks metric (reject) = %v", v)
	}
	if v := abusetest.MetricValue(t, s.env, "caddy_smtp_refusals_total", `module="smtp.handlers.rspamd"`, `reason="rspamd_reject"`); v < 1 {
		t.Errorf("refusals metric = %v", v)
	}
}

func TestRealRspamdNormal(t *testing.T) {
	url := needRspamd(t)
	s := start(t, map[string]any{"url": url})
	if r := s.send(t, normal); r.Code != 250 {
		t.Fatalf("normal message: %s", r)
	}
	got := s.stored(t)
	if len(got) != 1 {
		t.Fatalf("stored %d messages", len(got))
	}
	m := got[0]
	for _, want := range []string{"X-Spam-Symbols: ", "MIME_GOOD", "X-Spam-Status: ", "rspamd(", "rspamd no action, score "} {
		if !strings.Contains(m, want) {
			t.Errorf("stored message lacks %q:\n%s", want, m)
		}
	}
	// rspamd's milter_headers asks for X-Spam to be removed.
	if strings.Contains(m, "X-Spam: yes") {
		t.Errorf("X-Spam not removed:\n%s", m)
	}
}

func TestRealRspamdDown(t *testing.T) {
	port := testenv.FreePort(t) // nothing listens there
	s := start(t, map[string]any{"url": fmt.Sprintf("http://127.0.0.1:%d", port), "timeout": "2s"})
	before := abusetest.MetricValue(t, s.env, "caddy_smtp_rspamd_failures_total", `reason="connect"`, `policy="accept"`)
	if r := s.send(t, gtube); r.Code != 250 {
		t.Fatalf("rspamd down: %s", r)
	}
	if got := s.stored(t); len(got) != 1 {
		t.Fatalf("stored %d messages", len(got))
	}
	if d := abusetest.MetricValue(t, s.env, "caddy_smtp_rspamd_failures_total", `reason="connect"`, `policy="accept"`) - before; d != 1 {
		t.Errorf("failures metric grew by %v, want 1", d)
	}
}

// fake is an rspamd stand-in that answers with reply (or waits).
func fake(t *testing.T, reply string, wait time.Duration, seen chan<- http.Header) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/checkv2" || r.Method != "POST" {
			http.Error(w, "bad", 400)
			return
		}
		if seen != nil {
			seen <- r.Header.Clone()
		}
		select {
		case <-time.After(wait):
		case <-r.Context().Done():
			return
		}
		w.Write([]byte(reply))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestActions(t *testing.T) {
	cases := []struct {
		name    string
		reply   string
		cfg     map[string]any
		code    int
		want    []string // in the reply (refused) or the stored message
		notWant []string
		junk    bool
	}{
		{name: "soft reject", reply: `{"action":"soft reject","score":8,"messages":{"smtp_message":"Try later please"}}`,
			code: 451, want: []string{"4.7.1", "Try later please"}},
		{name: "greylist", reply: `{"action":"greylist","score":4}`, code: 451, want: []string{"4.7.1"}},
		{name: "greylist ignored", reply: `{"action":"greylist","score":4}`, cfg: map[string]any{"ignore_greylist": true}, code: 250},
		{name: "add header adds score", reply: `{"action":"add header","score":6.5,"symbols":{"BAD":{"name":"BAD","score":6.5}},"milter":{"add_headers":{"X-Spam":"Yes","X-Order":{"value":"top","order":0}}}}`,
			code: 250, want: []string{"X-Spam-Score: 6.5", "BAD(6.5)", "X-Order: top\r\nFrom:", "X-Spam: Yes\r\n\r\n"}, junk: true},
		{name: "action mode", reply: `{"action":"add header","score":1,"symbols":{}}`, cfg: map[string]any{"score_mode": "action", "action_score": 7},
			code: 250, want: []string{"X-Spam-Score: 7.0"}, junk: true},
		{name: "action mode no action", reply: `{"action":"no action","score":4}`, cfg: map[string]any{"score_mode": "action"},
			code: 250, notWant: []string{"X-Spam-Score"}},
		{name: "rewrite subject", reply: `{"action":"rewrite subject","score":7,"subject":"***SPAM*** hello"}`,
			code: 250, want: []string{"Subject: ***SPAM*** hello\r\n"}, notWant: []string{"Subject: hello"}, junk: true},
		{name: "bad reply accepted", reply: `{"action":"explode"}`, code: 250},
		{name: "bad reply deferred", reply: `not json`, cfg: map[string]any{"on_failure": "defer"}, code: 451, want: []string{"4.7.1"}},
		{name: "reject over threshold", reply: `{"action":"no action","score":12}`, code: 550},
		{name: "skipped by size", reply: `{"action":"reject","score":20}`, cfg: map[string]any{"max_size": 10}, code: 250},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := map[string]any{"url": fake(t, tc.reply, 0, nil)}
			for k, v := range tc.cfg {
				cfg[k] = v
			}
			s := start(t, cfg)
			r := s.send(t, normal)
			if r.Code != tc.code {
				t.Fatalf("reply %s, want %d", r, tc.code)
			}
			text := r.Text()
			if tc.code == 250 {
				got := s.stored(t)
				if len(got) != 1 {
					t.Fatalf("stored %d", len(got))
				}
				text = got[0]
				junk := len(testenv.Maildir(t, s.env.Path("maildir"), "example.test", "alice/.Junk")) == 1
				if junk != tc.junk {
					t.Errorf("junk = %v, want %v", junk, tc.junk)
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("lacks %q:\n%s", w, text)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(text, w) {
					t.Errorf("has %q:\n%s", w, text)
				}
			}
		})
	}
}

func TestEnvelopeAndTimeout(t *testing.T) {
	seen := make(chan http.Header, 1)
	s := start(t, map[string]any{"url": fake(t, `{"action":"no action","score":0}`, 3*time.Second, seen), "timeout": "500ms", "on_failure": "defer"})
	start := time.Now()
	r := s.send(t, normal)
	if r.Code != 451 || time.Since(start) > 2500*time.Millisecond {
		t.Fatalf("timeout: %s after %v", r, time.Since(start))
	}
	h := <-seen
	for k, v := range map[string]string{"Ip": "127.0.0.1", "Helo": "client.example.org", "From": "someone@example.org",
		"Rcpt": "alice@example.test", "Hostname": "unknown", "Mta-Name": "mail.example.test"} {
		if h.Get(k) != v {
			t.Errorf("header %s = %q, want %q", k, h.Get(k), v)
		}
	}
	if h.Get("Queue-Id") == "" || h.Get("User") != "" {
		t.Errorf("Queue-Id %q, User %q", h.Get("Queue-Id"), h.Get("User"))
	}
	if v := abusetest.MetricValue(t, s.env, "caddy_smtp_rspamd_failures_total", `reason="timeout"`, `policy="defer"`); v < 1 {
		t.Errorf("timeout metric = %v", v)
	}
}

func TestCaddyfile(t *testing.T) {
	adapttest.Run(t, func() caddyfile.Unmarshaler { return new(Rspamd) },
		"rspamd a b",
		"rspamd {\n\tbogus 1\n}",
		"rspamd {\n\tgreylist maybe\n}",
		"rspamd {\n\tmax_size lots\n}",
		"rspamd {\n\ttimeout\n}",
	)
}
