package tarpit_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/abusetest"
	"github.com/caddyserver/caddy/v2"
)

// The memory benchmark runs the server as a child process (this test
// binary with TARPIT_BENCH_CHILD set to a config file), so that its
// figures are the server's alone; the parent holds the client sockets.
func TestMain(m *testing.M) {
	if cfg := os.Getenv("TARPIT_BENCH_CHILD"); cfg != "" {
		runChild(cfg)
		return
	}
	os.Exit(m.Run())
}

// childStats is what the child reports about itself.
type childStats struct {
	RSSKiB      int64  `json:"rss_kib"`
	HeapInuse   uint64 `json:"heap_inuse"`
	StackInuse  uint64 `json:"stack_inuse"`
	Sys         uint64 `json:"sys"`
	Goroutines  int    `json:"goroutines"`
	OpenConns   int    `json:"open_conns"`
	TarpitWaits int    `json:"tarpit_waiting"`
}

func runChild(path string) {
	raiseFileLimit()
	cfg, err := os.ReadFile(path)
	if err == nil {
		err = caddy.Load(cfg, true)
	}
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("READY")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		// Any line asks for the stats.
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b, _ := json.Marshal(childStats{RSSKiB: vmRSS(), HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse, Sys: ms.Sys, Goroutines: runtime.NumGoroutine()})
		fmt.Println(string(b))
	}
	_ = caddy.Stop()
	os.Exit(0)
}

func vmRSS() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return -1
}

func raiseFileLimit() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

// BenchmarkTarpitMemory holds 10,000 sessions (TARPIT_SESSIONS to change)
// in a tarpit and reports the server process's memory: "greeting" holds
// them in a long greeting delay, "error" in a long error delay after
// EHLO, MAIL and an unknown recipient (the session is then inside
// go-smtp, with its buffers). It is not a timed test: run it alone, once:
//
//	go test ./modules/tarpit -run '^$' -bench TarpitMemory -benchtime 1x
func BenchmarkTarpitMemory(b *testing.B) {
	b.Run("greeting", func(b *testing.B) {
		benchTarpitMemory(b, map[string]any{"greeting_delay": "10m"}, "")
	})
	b.Run("error", func(b *testing.B) {
		benchTarpitMemory(b, map[string]any{"error_delay": "10m", "max_delay": "10m"},
			"EHLO client.example.org\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<nobody@example.test>\r\n")
	})
}

func benchTarpitMemory(b *testing.B, handler map[string]any, send string) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("TARPIT_SESSIONS")); err == nil && v > 0 {
		n = v
	}
	raiseFileLimit()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < uint64(n+200) {
		b.Skipf("open file limit %d is too low for %d sessions", lim.Cur, n)
	}
	env := testenv.New(b)
	addr := abusetest.Addr(b)
	app := abusetest.App(env, addr, []any{tp(handler)}, func(srv map[string]any) {
		srv["limits"] = map[string]any{"session_timeout": "30m"}
	})
	path := filepath.Join(b.TempDir(), "server.json")
	if err := os.WriteFile(path, env.Config(app, nil), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TARPIT_BENCH_CHILD="+path)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	out := bufio.NewReader(stdout)
	if line, _ := out.ReadString('\n'); !strings.HasPrefix(line, "READY") {
		b.Fatalf("server: %q", line)
	}
	stats := func() childStats {
		fmt.Fprintln(stdin, "stats")
		line, err := out.ReadString('\n')
		if err != nil {
			b.Fatalf("server stats: %v", err)
		}
		var s childStats
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			b.Fatalf("server stats %q: %v", line, err)
		}
		return s
	}
	waitingNow := func() int {
		for _, l := range abusetest.Metric(b, env, "caddy_smtp_tarpit_waiting ") {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			return int(v)
		}
		return -1
	}
	base := stats()

	b.ResetTimer()
	t0 := time.Now()
	conns := make([]interface{ Close() error }, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		// Spread over 50 client addresses (ephemeral ports per address).
		c, err := abusetest.TryDialFrom(fmt.Sprintf("127.0.0.%d", 1+i%50), addr)
		if err != nil {
			b.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		if send != "" {
			// Pipelined; the replies stay unread in the socket buffers.
			if _, err := c.Write([]byte(send)); err != nil {
				b.Fatalf("connection %d: %v", i, err)
			}
		}
	}
	if !testenv.WaitFor(2*time.Minute, func() bool { return waitingNow() >= n }) {
		b.Fatalf("only %d of %d sessions in the tarpit", waitingNow(), n)
	}
	opened := time.Since(t0)
	s := stats()
	b.StopTimer()

	mib := func(v float64) float64 { return v / (1 << 20) }
	b.ReportMetric(mib(float64(s.RSSKiB*1024)), "server-RSS-MiB")
	b.ReportMetric(mib(float64(s.HeapInuse)), "server-heap-MiB")
	b.ReportMetric(mib(float64(s.StackInuse)), "server-stack-MiB")
	b.ReportMetric(float64((s.RSSKiB-base.RSSKiB)*1024)/float64(n), "RSS-B/session")
	b.ReportMetric(float64(s.HeapInuse+s.StackInuse-base.HeapInuse-base.StackInuse)/float64(n), "heap+stack-B/session")
	b.Logf("%d sessions held in %v; server before: RSS %d KiB, %d goroutines; after: RSS %d KiB (%.1f MiB), heap in use %.1f MiB, stacks %.1f MiB, Go sys %.1f MiB, %d goroutines",
		n, opened.Round(time.Millisecond), base.RSSKiB, base.Goroutines, s.RSSKiB, mib(float64(s.RSSKiB*1024)), mib(float64(s.HeapInuse)), mib(float64(s.StackInuse)), mib(float64(s.Sys)), s.Goroutines)
	if mib(float64(s.RSSKiB*1024)) > 300 {
		b.Errorf("server RSS %.1f MiB is over the 300 MiB goal", mib(float64(s.RSSKiB*1024)))
	}
}
