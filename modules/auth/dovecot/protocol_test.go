package dovecot

import (
	"bufio"
	"context"
	"errors"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/adapttest"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func TestParseReply(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		line string
		want reply
		bad  bool
	}{
		{line: "OK\t7\tuser=alice@example.test", want: reply{Cmd: "OK", ID: "7", Args: []string{"user=alice@example.test"}}},
		{line: "FAIL\t12\tuser=a\tcode=temp_fail\r", want: reply{Cmd: "FAIL", ID: "12", Args: []string{"user=a", "code=temp_fail"}}},
		{line: "NOTFOUND\t3", want: reply{Cmd: "NOTFOUND", ID: "3"}},
		{line: "USER\t3\tna\x01tme\tuid=1", want: reply{Cmd: "USER", ID: "3", Args: []string{"na\tme", "uid=1"}}},
		{line: "MECH\tPLAIN\tplaintext", want: reply{Cmd: "MECH", Args: []string{"PLAIN", "plaintext"}}},
		{line: "DONE", want: reply{Cmd: "DONE"}},
		{line: "", bad: true},
		{line: "\tOK", bad: true},
		{line: "OK", bad: true},
		{line: "OK\tx1", bad: true},
		{line: "FAIL\t12345678901", bad: true},
	} {
		got, err := parseReply(c.line)
		if c.bad {
			if err == nil {
				t.Errorf("%q: parsed as %+v, want an error", c.line, got)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: got %+v, %v; want %+v", c.line, got, err, c.want)
		}
	}
	fail, _ := parseReply("FAIL\t1\ttemp")
	fail2, _ := parseReply("FAIL\t1\tcode=temp_fail")
	fail3, _ := parseReply("FAIL\t1\tuser=temp\tcode=user_disabled")
	if !fail.tempFail() || !fail2.tempFail() || fail3.tempFail() {
		t.Errorf("tempFail: %v %v %v", fail.tempFail(), fail2.tempFail(), fail3.tempFail())
	}
}

// FuzzParseReply: no panic on any line; a parsed reply has a command
// with no tab, and an answer a numeric ID; escape and unescape are
// inverses.
func FuzzParseReply(f *testing.F) {
	for _, seed := range []string{
		"OK\t1\tuser=alice@example.test",
		"FAIL\t2\tuser=x\tcode=temp_fail\treason=db down",
		"CONT\t3\tZm9v",
		"USER\t4\talice\x01t\x01n\x011\x01\tuid=1",
		"NOTFOUND\t5",
		"VERSION\t1\t2",
		"\x01",
		"OK\t\t",
		"OK\t99999999999",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		if unescape(escape(line)) != line {
			t.Fatalf("unescape(escape(%q)) = %q", line, unescape(escape(line)))
		}
		if strings.ContainsAny(escape(line), "\t\r\n\x00") {
			t.Fatalf("escape(%q) = %q keeps a control character", line, escape(line))
		}
		r, err := parseReply(line)
		if err != nil {
			return
		}
		if r.Cmd == "" || strings.Contains(r.Cmd, "\t") {
			t.Fatalf("%q: command %q", line, r.Cmd)
		}
		switch r.Cmd {
		case "OK", "FAIL", "CONT", "USER", "NOTFOUND", "PASS":
			if !isID(r.ID) {
				t.Fatalf("%q: answer with ID %q", line, r.ID)
			}
		default:
			if r.ID != "" {
				t.Fatalf("%q: %s with ID %q", line, r.Cmd, r.ID)
			}
		}
		r.param("user")
		r.tempFail()
	})
}

// fakeAuth is a TCP server that does Dovecot's auth-client handshake
// and then answers AUTH requests with answer (nil: never answers).
func fakeAuth(t *testing.T, answer func(w *bufio.Writer, id, resp string) bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				go func() { <-t.Context().Done(); nc.Close() }()
				w := bufio.NewWriter(nc)
				w.WriteString("VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\nCOOKIE\t00\nDONE\n")
				w.Flush()
				sc := bufio.NewScanner(nc)
				for sc.Scan() {
					f := strings.Split(sc.Text(), "\t")
					if f[0] != "AUTH" || answer == nil {
						continue
					}
					resp := ""
					for _, p := range f {
						if v, ok := strings.CutPrefix(p, "resp="); ok {
							resp = v
						}
					}
					if !answer(w, f[1], resp) {
						return // hang up
					}
					w.Flush()
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestUnreachableOrSilent: no Dovecot, or one that does not answer,
// is a temporary error within the timeout, never a wrong password.
func TestUnreachableOrSilent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	silent := fakeAuth(t, nil)
	for _, addr := range []string{closed, silent, "/nonexistent/auth-client"} {
		m := provisioned(t, &Dovecot{Auth: addr, Userdb: addr, Timeout: caddy.Duration(300 * time.Millisecond)})
		start := time.Now()
		_, err := m.Authenticate(ctx, "alice@example.test", "pw")
		if err == nil || errors.Is(err, smtpapp.ErrAuthFailed) {
			t.Errorf("%s: login: %v", addr, err)
		}
		_, err = m.Lookup(ctx, "alice@example.test")
		if err == nil || errors.Is(err, smtpapp.ErrNoSuchUser) {
			t.Errorf("%s: lookup: %v", addr, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: took %v with a 300ms timeout", addr, d)
		}
	}
}

// TestTempFailAndReconnect: FAIL with temp_fail is a temporary error;
// a connection the service closed is dialed again without an error
// for the request that finds it closed.
func TestTempFailAndReconnect(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	n := 0
	addr := fakeAuth(t, func(w *bufio.Writer, id, resp string) bool {
		mu.Lock()
		n++
		k := n
		mu.Unlock()
		switch k {
		case 1:
			w.WriteString("FAIL\t" + id + "\tcode=temp_fail\treason=db down\n")
		case 2:
			w.WriteString("OK\t" + id + "\tuser=alice@example.test\n")
			w.Flush()
			return false // then hang up, as an idle timeout would
		default:
			w.WriteString("OK\t" + id + "\tuser=alice@example.test\n")
		}
		return true
	})
	m := provisioned(t, &Dovecot{Auth: addr, Userdb: addr, Timeout: caddy.Duration(2 * time.Second)})
	ctx := context.Background()
	if _, err := m.Authenticate(ctx, "alice@example.test", "pw"); err == nil || errors.Is(err, smtpapp.ErrAuthFailed) {
		t.Fatalf("temp_fail: %v", err)
	}
	if acct, err := m.Authenticate(ctx, "alice@example.test", "pw"); err != nil || acct != "alice@example.test" {
		t.Fatalf("second: %q %v", acct, err)
	}
	time.Sleep(50 * time.Millisecond)
	if acct, err := m.Authenticate(ctx, "alice@example.test", "pw"); err != nil || acct != "alice@example.test" {
		t.Fatalf("after the service hung up: %q %v", acct, err)
	}
	if _, err := m.Authenticate(ctx, "a\x00b", "pw"); err != smtpapp.ErrAuthFailed {
		t.Fatalf("NUL in the user name: %v", err)
	}
}

func TestParseAddress(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"/run/dovecot/auth-client":      "unix /run/dovecot/auth-client",
		"unix/run/auth":                 "unix run/auth",
		"unix//run/auth":                "unix /run/auth",
		"127.0.0.1:12345":               "tcp 127.0.0.1:12345",
		"tcp/[::1]:12345":               "tcp [::1]:12345",
		"dovecot.internal:9000":         "tcp dovecot.internal:9000",
		"dovecot.internal":              "error",
		"unix/":                         "error",
		":9000":                         "error",
		"relative/path/without/a/colon": "error",
	} {
		network, addr, err := ParseAddress(in)
		got := network + " " + addr
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("ParseAddress(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	adapttest.Run(t, func() caddyfile.Unmarshaler { return new(Dovecot) },
		"dovecot a b",
		"dovecot {\n\tauth\n}",
		"dovecot {\n\tuserdb a b\n}",
		"dovecot {\n\ttimeout soon\n}",
		"dovecot {\n\tstrip_domain yes\n}",
		"dovecot {\n\tpassword x\n}",
	)
}
