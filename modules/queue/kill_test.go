package queue_test

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

// buildCaddy builds Caddy with the queue into a temporary binary.
func buildCaddy(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the binary")
	}
	bin := filepath.Join(t.TempDir(), "caddy")
	cmd := exec.Command(gobin, "build", "-o", bin, "github.com/caddy-smtp/caddy-smtp/modules/queue/internal/testcaddy")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type caddyProc struct {
	cmd *exec.Cmd
	log string
}

func startCaddy(t *testing.T, bin, config, smtpAddr string, n int) *caddyProc {
	t.Helper()
	logFile := filepath.Join(filepath.Dir(config), fmt.Sprintf("caddy-%d.log", n))
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", config)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), "HOME="+filepath.Dir(config), "XDG_DATA_HOME="+filepath.Join(filepath.Dir(config), "data"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lf.Close()
	p := &caddyProc{cmd: cmd, log: logFile}
	t.Cleanup(func() { p.kill() })
	if !testenv.WaitFor(20*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", smtpAddr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		p.kill()
		b, _ := os.ReadFile(logFile)
		t.Fatalf("caddy did not start listening on %s:\n%s", smtpAddr, b)
	}
	return p
}

func (p *caddyProc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
	}
}

// The process is killed (SIGKILL) with messages in the queue: after a
// restart every acknowledged message is delivered, exactly once when none
// was in flight at the kill, and at least once when some were.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Caddy binary")
	}
	bin := buildCaddy(t)
	h := newHarness(t, "127.0.0.2")
	mxAddr := fmt.Sprintf("127.0.0.2:%d", h.port)
	h.mx["127.0.0.2"].Close()
	h.queue["retry"] = map[string]any{"initial": "300ms", "max": "300ms", "jitter": -1}
	h.queue["max_concurrency"] = 4
	config := h.env.Path("caddy.json")
	os.WriteFile(config, h.config(), 0o600)

	// Phase 1: the MX is down; 20 messages wait in the queue; kill -9.
	p := startCaddy(t, bin, config, h.smtpAddr, 1)
	const n1 = 20
	for i := range n1 {
		send(t, h.smtpAddr, "alice@example.test", []string{fmt.Sprintf("a%d@example.org", i)}, message(fmt.Sprintf("kill a%d", i), "a@example.org"))
	}
	time.Sleep(200 * time.Millisecond)

	// The subcommands talk to the running instance.
	out, err := exec.Command(bin, "smtp-queue", "--address", h.env.Admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("%d message(s)", n1)) || !strings.Contains(string(out), "a7@example.org") {
		t.Errorf("caddy smtp-queue: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "smtp-dkim", "--address", h.env.Admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "caddysmtp._domainkey.example.test. 3600 IN TXT \"v=DKIM1; k=ed25519; p=") {
		t.Errorf("caddy smtp-dkim: %v\n%s", err, out)
	}
	// Validating the config next to the running server works (the spool
	// lock is not taken by a config that is only validated).
	cmd := exec.Command(bin, "validate", "--config", config)
	cmd.Env = append(os.Environ(), "HOME="+filepath.Dir(config))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("caddy validate next to the running server: %v\n%s", err, out)
	}

	p.kill()
	mx := testenv.StartMX(t, mxAddr, testenv.MXOptions{})
	p = startCaddy(t, bin, config, h.smtpAddr, 2)
	if !mx.WaitMessages(n1, 20*time.Second) {
		b, _ := os.ReadFile(p.log)
		t.Fatalf("after the restart only %d of %d messages arrived\n%s", len(mx.Messages()), n1, b)
	}
	time.Sleep(700 * time.Millisecond) // time for a duplicate to show up
	c := mx.Count()
	for i := range n1 {
		if got := c[fmt.Sprintf("a%d@example.org", i)]; got != 1 {
			t.Errorf("a%d delivered %d times, want exactly once", i, got)
		}
	}

	// Phase 2: kill -9 while deliveries run (slow MX).
	mx.Delay(40 * time.Millisecond)
	const n2 = 30
	for i := range n2 {
		send(t, h.smtpAddr, "alice@example.test", []string{fmt.Sprintf("b%d@example.org", i)}, message(fmt.Sprintf("kill b%d", i), "b@example.org"))
	}
	testenv.WaitFor(10*time.Second, func() bool { return len(mx.Messages()) >= n1+10 })
	p.kill()
	before := len(mx.Messages()) - n1
	p = startCaddy(t, bin, config, h.smtpAddr, 3)
	if !testenv.WaitFor(20*time.Second, func() bool {
		c := mx.Count()
		for i := range n2 {
			if c[fmt.Sprintf("b%d@example.org", i)] == 0 {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("lost messages after kill -9 during deliveries: %v", mx.Count())
	}
	time.Sleep(700 * time.Millisecond)
	dups := 0
	for i, c := 0, mx.Count(); i < n2; i++ {
		dups += c[fmt.Sprintf("b%d@example.org", i)] - 1
	}
	t.Logf("kill -9 during deliveries: %d delivered before the kill, %d duplicates after the restart", before, dups)
	if dups > 4 {
		t.Errorf("%d duplicates: more than the deliveries that can be in flight (max_concurrency 4)", dups)
	}
	if left, _ := os.ReadDir(filepath.Join(h.env.Path("queue"), "queue")); len(left) != 0 {
		time.Sleep(time.Second)
		if left, _ := os.ReadDir(filepath.Join(h.env.Path("queue"), "queue")); len(left) != 0 {
			t.Errorf("left in the spool: %v", left)
		}
	}
}
