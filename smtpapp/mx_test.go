package smtpapp_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

const (
	aliceHash = "$2a$10$6jgH4C347SKTxHE7VlXyvelsUdMGEQ3kgJM74mhrsF2/2Cq.BILyG" // demo-alice
	bobHash   = "$2a$10$kvXyKiBsnshTO1Ec6j8Y2ufEVjAcNcQqVA2FGMpxxfC2g2/fqNy.m" // demo-bob
)

// mxApp is the smtp app config of a plain inbound MX on addr.
func mxApp(env *testenv.Env, addr string, mods ...func(app, srv map[string]any)) map[string]any {
	srv := map[string]any{
		"listen":   []string{addr},
		"hostname": "mail.example.test",
		"tls":      map[string]any{"disable_starttls": true},
		"limits":   map[string]any{"max_message_size": 64 * 1024},
	}
	app := map[string]any{
		"local_domains": []string{"example.test"},
		"accounts": map[string]any{"provider": "static", "accounts": []any{
			map[string]any{"address": "alice@example.test", "password": aliceHash, "aliases": []string{"postmaster@example.test"}},
			map[string]any{"address": "bob@example.test", "password": bobHash},
		}},
		"local_delivery": map[string]any{"target": "maildir", "root": env.Path("maildir")},
		"spool_dir":      env.Path("spool"),
		"grace_period":   "10s",
		"servers":        map[string]any{"mx": srv},
	}
	for _, m := range mods {
		m(app, srv)
	}
	return app
}

func startMX(t *testing.T, mods ...func(app, srv map[string]any)) (*testenv.Env, string) {
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	env.Load(env.Config(mxApp(env, addr, mods...), nil))
	return env, addr
}

func aliceMail(t *testing.T, env *testenv.Env) []string {
	return testenv.Maildir(t, env.Path("maildir"), "example.test", "alice")
}

func TestDeliverToMaildir(t *testing.T) {
	env, addr := startMX(t)
	c, greet := testenv.Dial(t, addr)
	if greet.Code != 220 || !strings.Contains(greet.Text(), "mail.example.test") {
		t.Fatalf("greeting: %s", greet)
	}
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	body := "From: sender@example.org\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\nline one\r\n..leading dot\r\n\r\nlast line\r\n"
	wantStored := strings.Replace(body, "\r\n..leading", "\r\n.leading", 1)
	c.Send(body + ".\r\n")
	if r := c.Read(); r.Code != 250 || !strings.HasPrefix(r.Text(), "2.0.0") {
		t.Fatalf("end of data: %s", r)
	}
	files := aliceMail(t, env)
	if len(files) != 1 {
		t.Fatalf("want exactly 1 file in alice's new/, got %d", len(files))
	}
	got, _ := os.ReadFile(files[0])
	if !bytes.HasSuffix(got, []byte(wantStored)) {
		t.Fatalf("stored message does not end with the exact body:\n%q", got)
	}
	head := string(got[:len(got)-len(wantStored)])
	for _, want := range []string{"Return-Path: <sender@example.org>\r\n", "Received: from client.example.org ([127.0.0.1])", "by mail.example.test"} {
		if !strings.Contains(head, want) {
			t.Errorf("added headers lack %q:\n%s", want, head)
		}
	}
	if !strings.Contains(files[0], ",S=") {
		t.Errorf("file name %s lacks Dovecot's S= size", files[0])
	}
	c.Expect("QUIT", 221)
}

func TestRecipientRouting(t *testing.T) {
	env, addr := startMX(t, func(app, srv map[string]any) {
		srv["limits"] = map[string]any{"max_errors": 50}
	})
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	for _, tc := range []struct {
		rcpt string
		code int
		enh  string
	}{
		{"<unknown@example.test>", 550, "5.1.1"},
		{"<someone@example.org>", 554, "5.7.1"},
		{"<bob%example.org@example.test>", 550, "5.1.1"},       // percent hack: a (missing) local mailbox, never relayed
		{"<@example.test:someone@example.org>", 554, "5.7.1"},  // source route: the plain reading is example.org
		{"<\"alice@example.org\"@example.test>", 501, "5.1.3"}, // quoted local part hiding an @
		{"<alice@example.test@example.org>", 501, "5.1.3"},     // two @
		{"<alice@[127.0.0.1]>", 553, "5.1.3"},                  // address literal
		{"<example.org!someone@example.test>", 550, "5.1.1"},   // bang path: local part only
		{"<alice\x01@example.test>", 501, "5.5.2"},             // control byte: refused before parsing
		{"<Alice+news@EXAMPLE.test>", 250, "2.0.0"},            // subaddress, case
		{"<postmaster@example.test>", 250, "2.0.0"},            // alias
		{"<bob@example.test.>", 250, "2.0.0"},                  // trailing dot
	} {
		r := c.Cmd("RCPT TO:" + tc.rcpt)
		if r.Code != tc.code || !strings.HasPrefix(r.Text(), tc.enh) {
			t.Errorf("RCPT TO:%s: want %d %s, got %s", tc.rcpt, tc.code, tc.enh, r)
		}
	}
	c.Expect("RSET", 250)
	// A relay attempt alone stores and queues nothing.
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	c.Expect("RCPT TO:<someone@example.org>", 554)
	if r := c.Cmd("DATA"); r.Code < 500 {
		t.Fatalf("DATA without recipients: %s", r)
	}
	entries, _ := os.ReadDir(env.Path("maildir"))
	if len(entries) != 0 {
		t.Fatalf("something was stored: %v", entries)
	}
}

func TestOversizeMessage(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	// 100 KiB over a 64 KiB limit, with lines that look like commands: they
	// must be read and thrown away, never executed.
	var b strings.Builder
	b.WriteString("Subject: big\r\n\r\n")
	for b.Len() < 100*1024 {
		b.WriteString("RCPT TO:<bob@example.test>\r\nQUIT\r\n")
	}
	c.Send(b.String() + ".\r\n")
	if r := c.Read(); r.Code != 552 || !strings.HasPrefix(r.Text(), "5.3.4") {
		t.Fatalf("oversize: want 552 5.3.4, got %s", r)
	}
	// The connection stays usable.
	c.Expect("NOOP", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Subject: small\r\n\r\nok\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("small message after oversize: %s", r)
	}
	if n := len(aliceMail(t, env)); n != 1 {
		t.Fatalf("want only the small message stored, got %d files", n)
	}
	if n := len(testenv.Maildir(t, env.Path("maildir"), "example.test", "bob")); n != 0 {
		t.Fatalf("a command inside the oversize body was executed: bob has %d files", n)
	}
}

func TestSizeParameterRefused(t *testing.T) {
	_, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	if r := c.Cmd("MAIL FROM:<sender@example.org> SIZE=1000000"); r.Code != 552 {
		t.Fatalf("SIZE over limit: %s", r)
	}
}

func TestOutOfOrderAndMalformed(t *testing.T) {
	_, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	for _, tc := range []struct {
		cmd  string
		code int
	}{
		{"MAIL FROM:<a@example.org>", 503}, // before EHLO
		{"EHLO client.example.org", 250},
		{"RCPT TO:<alice@example.test>", 503}, // before MAIL
		{"DATA", 503},
		{"MAIL FROM:<a@example.org", 501}, // unclosed bracket
		{"MAIL FROM:<a@example.org>", 250},
		{"MAIL FROM:<b@example.org>", 503}, // nested MAIL
		{"RCPT TO:<>", 501},
		{"AUTH PLAIN AGFsaWNlAGRlbW8tYWxpY2U=", 530}, // AUTH without TLS (RFC 3207)
	} {
		if r := c.Cmd(tc.cmd); r.Code != tc.code {
			t.Errorf("%q: want %d, got %s", tc.cmd, tc.code, r)
		}
	}
}

func TestTooLongLine(t *testing.T) {
	_, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	r := c.Cmd("MAIL FROM:<" + strings.Repeat("a", 3000) + "@example.org>")
	if r.Code != 500 {
		t.Fatalf("overlong line: %s", r)
	}
	if !c.Closed() {
		t.Fatal("connection not closed")
	}
}

func TestTooManyErrors(t *testing.T) {
	_, addr := startMX(t, func(app, srv map[string]any) {
		srv["limits"] = map[string]any{"max_errors": 3}
	})
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	c.Expect("RCPT TO:<nobody1@example.test>", 550)
	c.Expect("RCPT TO:<nobody2@example.test>", 550)
	c.Expect("RCPT TO:<nobody3@example.test>", 421)
	if !c.Closed() {
		t.Fatal("connection still open after too many errors")
	}
}

func TestSessionTimeout(t *testing.T) {
	_, addr := startMX(t, func(app, srv map[string]any) {
		srv["limits"] = map[string]any{"session_timeout": "1s"}
	})
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	// A slowloris client trickles a command and never finishes.
	c.Send("NO")
	// go-smtp answers the partial line (501), then the limit's 421.
	for {
		r := c.Read()
		if r.Err != nil {
			t.Fatalf("connection ended without a 421: %v", r.Err)
		}
		if r.Code == 421 {
			break
		}
	}
	if !c.Closed() {
		t.Fatal("connection open after the session limit")
	}
}

func TestConfigErrors(t *testing.T) {
	env := testenv.New(t)
	port := testenv.FreePort(t)
	for _, tc := range []struct {
		name  string
		mod   func(app, srv map[string]any)
		field string
	}{
		{"unknown handler", func(app, srv map[string]any) {
			srv["handlers"] = []any{map[string]any{"handler": "no_such_thing"}}
		}, "handlers"},
		{"bad listen address", func(app, srv map[string]any) { srv["listen"] = []string{"127.0.0.1:notaport"} }, "listen"},
		{"no maildir root", func(app, srv map[string]any) {
			app["local_delivery"] = map[string]any{"target": "maildir"}
		}, "root"},
		{"bad local domain", func(app, srv map[string]any) { app["local_domains"] = []string{"exa mple"} }, "local_domains"},
		{"bad trusted network", func(app, srv map[string]any) { srv["trusted_networks"] = []string{"10.0.0.0/33"} }, "trusted_networks"},
		{"bad password hash", func(app, srv map[string]any) {
			app["accounts"] = map[string]any{"provider": "static", "accounts": []any{map[string]any{"address": "a@example.test", "password": "plaintext"}}}
		}, "password"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := env.Config(mxApp(env, fmt.Sprintf("127.0.0.1:%d", port), tc.mod), nil)
			err := env.LoadErr(cfg)
			if err == nil {
				t.Fatal("config loaded")
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error does not name %q: %v", tc.field, err)
			}
		})
	}
}

// TestDeliveryFailureLeavesNothing: when one of two mailboxes cannot be
// written, the client gets 451 4.3.0 and neither mailbox has the message.
func TestDeliveryFailureLeavesNothing(t *testing.T) {
	env, addr := startMX(t)
	// bob's Maildir path is taken by a plain file: his copy fails.
	os.MkdirAll(env.Path("maildir", "example.test"), 0o700)
	os.WriteFile(env.Path("maildir", "example.test", "bob"), []byte("not a folder"), 0o600)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test", "bob@example.test")
	c.Send("Subject: x\r\n\r\nbody\r\n.\r\n")
	if r := c.Read(); r.Code != 451 || !strings.HasPrefix(r.Text(), "4.3.0") {
		t.Fatalf("want 451 4.3.0, got %s", r)
	}
	if n := len(aliceMail(t, env)); n != 0 {
		t.Fatalf("alice got a copy of a message that was refused (%d files)", n)
	}
	tmp, _ := os.ReadDir(env.Path("maildir", "example.test", "alice", "tmp"))
	if len(tmp) != 0 {
		t.Fatalf("leftovers in tmp/: %v", tmp)
	}
}

func TestMetrics(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	c.Expect("RCPT TO:<nobody@example.test>", 550)
	c.Expect("RCPT TO:<alice@example.test>", 250)
	c.Expect("DATA", 354)
	c.Send("Subject: x\r\n\r\nbody\r\n.\r\n")
	c.Read()
	c.Expect("QUIT", 221)
	resp, err := http.Get("http://" + env.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`caddy_smtp_messages_total{result="delivered",server="mx"}`,
		`caddy_smtp_refusals_total{module="",reason="no_such_user",server="mx",stage="rcpt"}`,
		`caddy_smtp_abuse_events_total{kind="unknown_recipient",server="mx"}`,
		`caddy_smtp_connections_total{server="mx"}`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestBDAT(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	c.Expect("RCPT TO:<alice@example.test>", 250)
	part1 := "Subject: chunks\r\n\r\n"
	part2 := "one\r\ntwo\r\n"
	c.Send(fmt.Sprintf("BDAT %d\r\n%s", len(part1), part1))
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("BDAT chunk: %s", r)
	}
	c.Send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(part2), part2))
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("BDAT LAST: %s", r)
	}
	files := aliceMail(t, env)
	if len(files) != 1 {
		t.Fatalf("want 1 message, got %d", len(files))
	}
	got, _ := os.ReadFile(files[0])
	if !bytes.HasSuffix(got, []byte(part1+part2)) {
		t.Fatalf("stored %q", got)
	}
	// A bare LF inside a chunk is refused too.
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	c.Expect("RCPT TO:<alice@example.test>", 250)
	bad := "Subject: x\r\n\r\nbare\nlf\r\n"
	c.Send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(bad), bad))
	if r := c.Read(); r.Code/100 != 5 {
		t.Fatalf("BDAT with bare LF: %s", r)
	}
	if n := len(aliceMail(t, env)); n != 1 {
		t.Fatalf("bare-LF chunk stored")
	}
}

func TestPostmaster(t *testing.T) {
	env, addr := startMX(t, func(app, srv map[string]any) {
		app["local_domains"] = []string{"example.test", "example.net"}
		app["postmaster"] = "bob@example.test"
	})
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	c.Expect("RCPT TO:<postmaster@example.test>", 250) // alice's alias wins
	c.Expect("RCPT TO:<PostMaster@example.net>", 250)  // no alias there: bob
	c.Expect("RCPT TO:<nobody@example.net>", 550)
	c.Expect("DATA", 354)
	c.Send("Subject: x\r\n\r\nx\r\n.\r\n")
	c.Read()
	if len(aliceMail(t, env)) != 1 || len(testenv.Maildir(t, env.Path("maildir"), "example.test", "bob")) != 1 {
		t.Fatal("postmaster mail not routed to alice (alias) and bob (postmaster account)")
	}
}
