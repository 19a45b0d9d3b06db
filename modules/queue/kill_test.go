package queue_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// startCaddy runs the binary built by TestKill9, its log numbered n.
func startCaddy(t *testing.T, bin, config, smtpAddr string, n int) *testenv.Caddy {
	t.Helper()
	return testenv.RunCaddy(t, bin, config, filepath.Join(filepath.Dir(config), fmt.Sprintf("caddy-%d.log", n)), smtpAddr)
}

// The process is killed (SIGKILL) with messages in the queue: after a
// restart every acknowledged message is delivered, exactly once when none
// was in flight at the kill, and at least once when some were.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Caddy binary")
	}
	bin := testenv.BuildCaddy(t, "github.com/caddy-smtp/caddy-smtp/modules/queue/internal/testcaddy")
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

	p.Kill()
	mx := testenv.StartMX(t, mxAddr, testenv.MXOptions{})
	p = startCaddy(t, bin, config, h.smtpAddr, 2)
	if !mx.WaitMessages(n1, 20*time.Second) {
		b := p.Output()
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
	p.Kill()
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
