package smtpapp_test

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// TestExitEndsSessions: when the process exits (SIGTERM), no client is
// cut off without a word (RFC 5321 3.8): a session waiting for a command,
// parked or live, gets 421 4.3.2, a message still arriving gets 451 and is
// not stored, then 421; and the process exits at once, not after the
// grace period. It runs the real binary, as the signal ends the process.
func TestExitEndsSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Caddy binary")
	}
	bin := testenv.BuildCaddy(t, "github.com/caddy-smtp/caddy-smtp/cmd/caddy")
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cfg := env.Path("caddy.json")
	if err := os.WriteFile(cfg, env.Config(mxApp(env, addr, parkFast(), func(app, _ map[string]any) {
		app["grace_period"] = "5m" // exiting must not wait for it
	}), nil), 0o600); err != nil {
		t.Fatal(err)
	}
	p := testenv.RunCaddy(t, bin, cfg, env.Path("caddy.log"), addr)

	parked, _ := testenv.Dial(t, addr)
	parked.Expect("EHLO client.example.org", 250)
	waitParked(t, env, 1)
	inMail, _ := testenv.Dial(t, addr) // in a transaction: never parks
	inMail.Expect("EHLO client.example.org", 250)
	inMail.Expect("MAIL FROM:<sender@example.org>", 250)
	sending, _ := testenv.Dial(t, addr)
	sending.Expect("EHLO client.example.org", 250)
	sending.StartMessage("sender@example.org", "alice@example.test")
	sending.Send("Subject: cut by the exit\r\n\r\nfirst half\r\n")
	time.Sleep(100 * time.Millisecond) // the body is read and waiting

	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expect := func(name string, c *testenv.Client, code int, enhanced string) {
		t.Helper()
		if r := c.Read(); r.Code != code || !strings.HasPrefix(r.Text(), enhanced) {
			t.Errorf("%s session at the exit: got %s, want %d %s", name, r, code, enhanced)
		}
	}
	expect("parked", parked, 421, "4.3.2")
	expect("in-transaction", inMail, 421, "4.3.2")
	expect("sending", sending, 451, "4.3.0")
	expect("sending", sending, 421, "4.3.2")
	for name, c := range map[string]*testenv.Client{"parked": parked, "in-transaction": inMail, "sending": sending} {
		if !c.Closed() {
			t.Errorf("%s session open after the exit", name)
		}
	}
	switch ok, err := p.Wait(15 * time.Second); {
	case !ok:
		t.Fatal("caddy still running 15 s after SIGTERM")
	case err != nil:
		t.Errorf("caddy exited with %v:\n%s", err, p.Output())
	}
	t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if n := len(aliceMail(t, env)); n != 0 {
		t.Fatalf("a message cut by the exit was stored (%d files)", n)
	}
}
