package dovecot

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

// dovecotd is a Dovecot started by a test, with its auth service only
// (no mail protocols), its config, state and sockets in a temporary
// folder, and its users in a passwd-file.
type dovecotd struct {
	dir        string
	authSock   string // auth-client unix socket
	userdbSock string // auth-userdb unix socket
	authTCP    string // auth-client inet_listener on loopback
	cmd        *exec.Cmd
	exited     chan struct{}
}

// dovecotUsers: address, plain password.
var dovecotUsers = [][2]string{
	{"alice@example.test", "alice-dovecot-pw"},
	{"bob@example.test", "bob-dovecot-pw"},
}

// startDovecot runs dovecot -F with a config in a temporary folder; it
// is stopped (SIGTERM to its PID) when the test ends. Without the
// dovecot binary the test is skipped, except in CI, where it fails.
func startDovecot(t *testing.T, extraConf string, users [][2]string) *dovecotd {
	t.Helper()
	bin, err := exec.LookPath("dovecot")
	if err != nil {
		for _, p := range []string{"/usr/sbin/dovecot", "/usr/local/sbin/dovecot"} {
			if _, err2 := os.Stat(p); err2 == nil {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("dovecot is not installed (Debian: apt-get install dovecot-core)")
		}
		t.Fatal("dovecot is not installed, and CI is set")
	}
	if os.Geteuid() != 0 {
		// Dovecot's master wants root to run its services as their users.
		if os.Getenv("CI") == "" {
			t.Skip("the test starts Dovecot, which needs root")
		}
		t.Fatal("the test starts Dovecot, which needs root, and CI is set")
	}
	// Short path: unix socket paths are limited to about 100 bytes.
	dir, err := os.MkdirTemp("", "dovecot")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &dovecotd{dir: dir,
		authSock:   filepath.Join(dir, "auth-client"),
		userdbSock: filepath.Join(dir, "auth-userdb"),
		authTCP:    fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		exited:     make(chan struct{}),
	}
	var passwd strings.Builder
	for _, u := range users {
		fmt.Fprintf(&passwd, "%s:{PLAIN}%s:65534:65534::%s::\n", u[0], u[1], filepath.Join(dir, "home", u[0]))
	}
	write(t, filepath.Join(dir, "passwd"), passwd.String())
	host, port, _ := net.SplitHostPort(d.authTCP)
	// Dovecot runs as root here (the test's user); its unprivileged
	// processes as nobody. The auth processes stay root so that they
	// can read the passwd-file in the test's private folder.
	conf := fmt.Sprintf(`protocols =
base_dir = %[1]s/base
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
info_log_path = %[1]s/dovecot.log
ssl = no
default_internal_user = nobody
default_internal_group = nogroup
default_login_user = nobody
auth_mechanisms = plain login
disable_plaintext_auth = yes
auth_failure_delay = 0
passdb {
  driver = passwd-file
  args = %[1]s/passwd
}
userdb {
  driver = passwd-file
  args = %[1]s/passwd
}
service auth {
  user = root
  unix_listener %[2]s {
    mode = 0600
  }
  unix_listener %[3]s {
    mode = 0600
  }
  inet_listener auth-tcp {
    address = %[4]s
    port = %[5]s
  }
}
service auth-worker {
  user = root
}
%[6]s
`, dir, d.authSock, d.userdbSock, host, port, extraConf)
	write(t, filepath.Join(dir, "dovecot.conf"), conf)
	for _, sub := range []string{"base", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d.cmd = exec.Command(bin, "-F", "-c", filepath.Join(dir, "dovecot.conf"))
	out, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stdout, d.cmd.Stderr = out, out
	// Its own process group, so that stop can wait for the children
	// (the auth processes) too.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); out.Close(); close(d.exited) }()
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			for _, f := range []string{"stdout", "dovecot.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("dovecot %s:\n%s", f, b)
			}
		}
	})
	ready := testenv.WaitFor(10*time.Second, func() bool {
		select {
		case <-d.exited:
			return true
		default:
		}
		for _, a := range [][2]string{{"unix", d.authSock}, {"unix", d.userdbSock}, {"tcp", d.authTCP}} {
			c, err := net.DialTimeout(a[0], a[1], time.Second)
			if err != nil {
				return false
			}
			c.Close()
		}
		return true
	})
	select {
	case <-d.exited:
		b, _ := os.ReadFile(filepath.Join(dir, "stdout"))
		l, _ := os.ReadFile(filepath.Join(dir, "dovecot.log"))
		t.Fatalf("dovecot exited at start: %s\n%s", b, l)
	default:
	}
	if !ready {
		t.Fatal("dovecot's auth sockets did not open")
	}
	return d
}

// stop ends the Dovecot that this test started: SIGTERM to its PID,
// then to its process group (made at start, Dovecot's processes only),
// and it waits until they are all gone.
func (d *dovecotd) stop(t *testing.T) {
	pgid := d.cmd.Process.Pid
	select {
	case <-d.exited:
	default:
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("dovecot (pid %d) did not stop on SIGTERM; killing it", pgid)
			d.cmd.Process.Kill()
			<-d.exited
		}
	}
	// The children outlive the master while a client is connected to
	// them (as the auth process is to this test's module); a service
	// manager stops the whole group, and so does this.
	syscall.Kill(-pgid, syscall.SIGTERM)
	gone := testenv.WaitFor(10*time.Second, func() bool {
		return syscall.Kill(-pgid, 0) == syscall.ESRCH
	})
	if !gone {
		t.Errorf("dovecot's children (process group %d) did not stop on SIGTERM; killing them", pgid)
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
