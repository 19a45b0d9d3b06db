package testenv

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BuildCaddy builds the main package pkg (Caddy with modules) into a
// binary in the test's temporary folder, for tests that need a process of
// its own (a kill, a signal). It skips the test without a go command.
func BuildCaddy(t testing.TB, pkg string) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the binary")
	}
	bin := filepath.Join(t.TempDir(), "caddy")
	if out, err := exec.Command(gobin, "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// Caddy is a Caddy process started by RunCaddy.
type Caddy struct {
	// Log is the file that holds the process's output.
	Log string

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// RunCaddy runs bin with the config file config (its output in logPath,
// HOME and XDG_DATA_HOME in the config's folder) and waits until addr
// takes connections. The process is killed at the end of the test if it
// is still running.
func RunCaddy(t testing.TB, bin, config, logPath, addr string) *Caddy {
	t.Helper()
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(config)
	cmd := exec.Command(bin, "run", "--config", config)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lf.Close()
	p := &Caddy{Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(p.Kill)
	if !WaitFor(20*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		p.Kill()
		t.Fatalf("caddy did not start listening on %s:\n%s", addr, p.Output())
	}
	return p
}

// Signal sends sig to the process.
func (p *Caddy) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill ends the process with SIGKILL (if it still runs) and waits for it.
func (p *Caddy) Kill() {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// Wait waits up to timeout for the process to exit; ok is false if it
// still runs, err is how it exited.
func (p *Caddy) Wait(timeout time.Duration) (ok bool, err error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(timeout):
		return false, nil
	}
}

// Output is what the process has written so far.
func (p *Caddy) Output() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}
