package smtpapp_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the binary")
	}
	bin := filepath.Join(t.TempDir(), "caddy")
	if out, err := exec.Command(gobin, "build", "-o", bin, "github.com/caddy-smtp/caddy-smtp/cmd/caddy").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cfg := env.Path("caddy.json")
	if err := os.WriteFile(cfg, env.Config(mxApp(env, addr, parkFast(), func(app, _ map[string]any) {
		app["grace_period"] = "5m" // exiting must not wait for it
	}), nil), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := env.Path("caddy.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "HOME="+env.Dir, "XDG_DATA_HOME="+env.Path("xdg"), "XDG_CONFIG_HOME="+env.Path("xdg"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logFile.Close()
	var exitErr error
	exited := make(chan struct{})
	go func() { exitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill() // if still running
		<-exited
	})
	if !testenv.WaitFor(20*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("caddy did not listen on %s:\n%s", addr, b)
	}

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
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
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
	select {
	case <-exited:
		if exitErr != nil {
			b, _ := os.ReadFile(logPath)
			t.Errorf("caddy exited with %v:\n%s", exitErr, b)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("caddy still running 15 s after SIGTERM")
	}
	t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if n := len(aliceMail(t, env)); n != 0 {
		t.Fatalf("a message cut by the exit was stored (%d files)", n)
	}
}
