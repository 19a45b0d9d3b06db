package smtpapp_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// Parking (park.go): an idle plaintext session gives back go-smtp's state
// and resumes where it was when the client speaks again. The client must
// not be able to tell, and no limit may be reset by it.

// parkFast: sessions park after 100ms idle.
func parkFast(mods ...func(lim map[string]any)) func(app, srv map[string]any) {
	return func(app, srv map[string]any) {
		lim := srv["limits"].(map[string]any)
		lim["park_idle_after"] = "100ms"
		for _, m := range mods {
			m(lim)
		}
	}
}

var parkedGauge = regexp.MustCompile(`caddy_smtp_connections_parked\{server="mx"\} (\d+)`)

// waitParked waits until n sessions are parked.
func waitParked(t *testing.T, env *testenv.Env, n int) {
	t.Helper()
	want := fmt.Sprint(n)
	var got string
	if !testenv.WaitFor(5*time.Second, func() bool {
		m := parkedGauge.FindStringSubmatch(metrics(t, env))
		got = "none"
		if m != nil {
			got = m[1]
		}
		return got == want
	}) {
		t.Fatalf("parked sessions: want %s, got %s", want, got)
	}
}

// TestParkedSessionResumes: after EHLO and a pause the session is parked;
// a pipelined transaction then gets exactly its own replies (go-smtp's
// replayed greeting is not seen) and the EHLO state holds (BDAT needs it).
func TestParkedSessionResumes(t *testing.T) {
	env, addr := startMX(t, parkFast())
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	waitParked(t, env, 1)

	body := "Subject: parked\r\n\r\nresumed\r\n"
	c.Send("MAIL FROM:<sender@example.org>\r\nRCPT TO:<alice@example.test>\r\n" +
		fmt.Sprintf("BDAT %d LAST\r\n", len(body)) + body)
	for i, want := range []int{250, 250, 250} {
		if r := c.Read(); r.Code != want {
			t.Fatalf("reply %d after resuming: %s", i+1, r)
		}
	}
	if n := len(aliceMail(t, env)); n != 1 {
		t.Fatalf("want 1 message stored, got %d", n)
	}
	// It parks again, and again comes back.
	waitParked(t, env, 1)
	c.Expect("NOOP", 250)
	c.Expect("QUIT", 221)
	waitParked(t, env, 0)
}

// TestParkedBeforeGreeting: a client silent after the banner parks too,
// and must still say EHLO first once it resumes.
func TestParkedBeforeGreeting(t *testing.T) {
	env, addr := startMX(t, parkFast())
	c, _ := testenv.Dial(t, addr)
	waitParked(t, env, 1)
	if r := c.Cmd("MAIL FROM:<sender@example.org>"); r.Code != 503 {
		t.Fatalf("MAIL before EHLO after a park: %s", r)
	}
	c.Expect("HELO client.example.org", 250)
	waitParked(t, env, 1)
	// HELO, not EHLO, is what the session remembers: no CHUNKING.
	c.Send("BDAT 1 LAST\r\nx")
	if r := c.Read(); r.Code != 503 {
		t.Fatalf("BDAT after HELO and a park: %s", r)
	}
}

// TestParkingKeepsLimits: the per-session message count survives a park
// (a client cannot reset it by pausing).
func TestParkingKeepsLimits(t *testing.T) {
	env, addr := startMX(t, parkFast(func(lim map[string]any) { lim["max_messages"] = 1 }))
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Subject: one\r\n\r\none\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("first message: %s", r)
	}
	waitParked(t, env, 1)
	if r := c.Cmd("MAIL FROM:<sender@example.org>"); r.Code < 400 {
		t.Fatalf("second message past max_messages after a park: %s", r)
	}
}

// TestParkedIdleTimeout: the read timeout holds while parked, with the
// same 421 a live session gets.
func TestParkedIdleTimeout(t *testing.T) {
	env, addr := startMX(t, parkFast(func(lim map[string]any) { lim["read_timeout"] = "1s" }))
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	waitParked(t, env, 1)
	start := time.Now()
	r := c.Read()
	if r.Code != 421 || !strings.HasPrefix(r.Text(), "4.4.2") {
		t.Fatalf("parked session at the read timeout: %s", r)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("timeout after %v", d)
	}
	if !c.Closed() {
		t.Fatal("connection open after the timeout")
	}
	waitParked(t, env, 0)
}

// TestParkedAcrossReload: a reload leaves parked sessions parked (it
// does not wake them all into go-smtp); each goes on in its config's
// go-smtp when its client speaks, and the old config's stop waits for it.
func TestParkedAcrossReload(t *testing.T) {
	env, addr := startMX(t, parkFast())
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	waitParked(t, env, 1)
	env.Load(env.Config(mxApp(env, addr, parkFast(func(lim map[string]any) { lim["max_recipients"] = 5 })), nil))
	time.Sleep(300 * time.Millisecond) // the old config's stop runs in the background
	waitParked(t, env, 1)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Subject: across a reload\r\n\r\nparked\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("parked session after a reload: %s", r)
	}
	if n := len(aliceMail(t, env)); n != 1 {
		t.Fatalf("want 1 message stored, got %d", n)
	}
	c.Expect("QUIT", 221)
}

// TestParkedClosedAtGraceEnd: a session still parked when the old
// config's grace period ends gets 421 4.3.2 and is closed, like a live one.
func TestParkedClosedAtGraceEnd(t *testing.T) {
	grace := func(app, srv map[string]any) { app["grace_period"] = "1s" }
	env, addr := startMX(t, parkFast(), grace)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	waitParked(t, env, 1)
	env.Load(env.Config(mxApp(env, addr, parkFast(), grace), nil))
	waitParked(t, env, 0)
	if r := c.Read(); r.Code != 421 || !strings.HasPrefix(r.Text(), "4.3.2") {
		t.Fatalf("parked session at the grace end: %s", r)
	}
	if !c.Closed() {
		t.Fatal("parked session open after the grace period")
	}
	fresh, _ := testenv.Dial(t, addr) // the new config serves
	fresh.Expect("EHLO client.example.org", 250)
	fresh.Expect("QUIT", 221)
}

// TestDetachedGreetingIsGoSMTPs: until a command needs go-smtp, the wire
// answers HELO and EHLO itself (serveDetached); its replies must be the
// ones go-smtp gives once attached, on a server without STARTTLS (mx) and
// on ones that offer it.
func TestDetachedGreetingIsGoSMTPs(t *testing.T) {
	_, plain := startMX(t)
	compareGreetings(t, plain)
	s := startSubmission(t) // a new config: the one above is gone
	compareGreetings(t, s.mx, s.sub)
}

func compareGreetings(t *testing.T, addrs ...string) {
	for _, addr := range addrs {
		for _, verb := range []string{"EHLO", "HELO", "EHLO \t", "HELO  "} {
			c, _ := testenv.Dial(t, addr)
			name := " client.example.org"
			if strings.HasSuffix(verb, " ") || strings.HasSuffix(verb, "\t") {
				name = "client.example.org \t" // white space as go-smtp trims it
			}
			detached := c.Expect(verb+name, 250)
			c.Expect("NOOP", 250) // needs go-smtp: the session attaches
			attached := c.Expect(verb+name, 250)
			if strings.Join(detached.Lines, "\n") != strings.Join(attached.Lines, "\n") {
				t.Errorf("%s %s: the wire answered\n%s\ngo-smtp answers\n%s", addr, verb,
					strings.Join(detached.Lines, "\n"), strings.Join(attached.Lines, "\n"))
			}
			if strings.HasPrefix(verb, "EHLO") && len(detached.Lines) < 5 {
				t.Errorf("%s: short EHLO reply %q", addr, detached.Lines)
			}
			c.Expect("QUIT", 221)
		}
	}
}

// TestReloadKeepsHalfACommand: a reload while a detached session has sent
// part of a command line loses nothing: the rest completes it.
func TestReloadKeepsHalfACommand(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Send("MAIL FROM:<sender@exa")
	time.Sleep(50 * time.Millisecond)
	env.Load(env.Config(mxApp(env, addr, func(app, srv map[string]any) {
		srv["limits"].(map[string]any)["max_recipients"] = 5
	}), nil))
	time.Sleep(200 * time.Millisecond) // the old config's stop runs in the background
	c.Send("mple.org>\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("MAIL split across a reload: %s", r)
	}
	c.Expect("RCPT TO:<alice@example.test>", 250)
	c.Expect("QUIT", 221)
}
