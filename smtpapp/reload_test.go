package smtpapp_test

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// TestFailedReloadKeepsOldConfig: when a new config fails to start after
// one of its servers bound, the old config keeps serving.
func TestFailedReloadKeepsOldConfig(t *testing.T) {
	env, addr := startMX(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	bad := env.Config(mxApp(env, addr, func(app, srv map[string]any) {
		srv["hostname"] = "new.example.test"
		app["servers"].(map[string]any)["zz"] = map[string]any{
			"listen": []string{busy.Addr().String()}, "hostname": "new.example.test",
			"tls": map[string]any{"disable_starttls": true},
		}
	}), nil)
	if err := env.LoadErr(bad); err == nil {
		t.Fatal("config with a busy port loaded")
	}
	_, greet := testenv.Dial(t, addr)
	if greet.Code != 220 || !strings.Contains(greet.Text(), "mail.example.test") {
		t.Fatalf("after a failed reload: %s", greet)
	}
}

// TestReloadDuringData: a session in DATA finishes on the old config and
// its message is stored; new connections get the new config; no connection
// attempt is refused during the reload.
func TestReloadDuringData(t *testing.T) {
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	env.Load(env.Config(mxApp(env, addr), nil))

	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Subject: across a reload\r\n\r\nfirst half\r\n")

	// Connect continuously while reloading.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	attempts := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			cc, greet := testenv.Dial(t, addr)
			mu.Lock()
			attempts++
			if greet.Code != 220 {
				failures = append(failures, greet.String())
			}
			mu.Unlock()
			cc.Cmd("QUIT")
			cc.Conn.Close()
		}
	}()

	// The new config: bob gets an alias, visible to new sessions only.
	newCfg := env.Config(mxApp(env, addr, func(app, srv map[string]any) {
		app["accounts"] = map[string]any{"provider": "static", "accounts": []any{
			map[string]any{"address": "alice@example.test", "password": aliceHash},
			map[string]any{"address": "bob@example.test", "password": bobHash, "aliases": []string{"robert@example.test"}},
		}}
	}), nil)
	time.Sleep(100 * time.Millisecond)
	env.Load(newCfg)
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()

	c.Send("second half\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("session across reload: %s", r)
	}
	if n := len(aliceMail(t, env)); n != 1 {
		t.Fatalf("want the message stored, got %d files", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(failures) > 0 || attempts == 0 {
		t.Fatalf("%d of %d connections failed during the reload: %v", len(failures), attempts, failures)
	}
	t.Logf("%d connections around the reload, all greeted", attempts)
	n, _ := testenv.Dial(t, addr)
	n.Expect("EHLO client.example.org", 250)
	n.Expect("MAIL FROM:<sender@example.org>", 250)
	n.Expect("RCPT TO:<robert@example.test>", 250)
}

// TestGraceEndEndsSessions: when the old config's grace period runs out,
// its sessions are ended, live ones too (go-smtp's own Close does nothing
// once its Shutdown has begun): an idle one gets 421 4.3.2, and a message
// still arriving is dropped with a 451, never stored half.
func TestGraceEndEndsSessions(t *testing.T) {
	grace := func(app, srv map[string]any) {
		app["grace_period"] = "1s"
		srv["limits"].(map[string]any)["park_idle_after"] = "-1s" // live, not parked
	}
	env, addr := startMX(t, grace)
	idle, _ := testenv.Dial(t, addr)
	idle.Expect("EHLO client.example.org", 250)
	idle.Expect("NOOP", 250)
	sending, _ := testenv.Dial(t, addr)
	sending.Expect("EHLO client.example.org", 250)
	sending.StartMessage("sender@example.org", "alice@example.test")
	sending.Send("Subject: cut at the grace end\r\n\r\nfirst half\r\n")
	env.Load(env.Config(mxApp(env, addr, grace), nil))
	if r := idle.Read(); r.Code != 421 || !strings.HasPrefix(r.Text(), "4.3.2") {
		t.Errorf("idle session at the grace end: %s", r)
	}
	if !idle.Closed() {
		t.Error("idle session open after the grace period")
	}
	// The cut message is answered 451 and the session ends with a 421.
	if r := sending.Read(); r.Code != 451 {
		t.Errorf("message cut at the grace end: %s", r)
	}
	if r := sending.Read(); r.Code != 421 {
		t.Errorf("session ended at the grace end: %s", r)
	}
	if !sending.Closed() {
		t.Error("sending session open after the grace period")
	}
	if n := len(aliceMail(t, env)); n != 0 {
		t.Fatalf("a message cut at the grace end was stored (%d files)", n)
	}
}
