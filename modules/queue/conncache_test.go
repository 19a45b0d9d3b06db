package queue_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// A burst of messages to one domain goes over fewer connections than
// messages (the connection cache), each message delivered once; with
// max_messages 3, a connection carries at most 3.
func TestConnectionReuse(t *testing.T) {
	h := newHarness(t, "127.0.0.2")
	h.queue["connection_cache"] = map[string]any{"max_messages": 3, "idle_timeout": "30s"}
	h.load()
	mx := h.mx["127.0.0.2"]
	const n = 30
	var wg sync.WaitGroup
	for c := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; i < n; i += 3 {
				to := fmt.Sprintf("r%d@example.org", i)
				send(t, h.smtpAddr, "alice@example.test", []string{to}, message(fmt.Sprint("burst ", i), to))
			}
		}()
	}
	wg.Wait()
	if !mx.WaitMessages(n, 20*time.Second) {
		t.Fatalf("delivered %d of %d", len(mx.Messages()), n)
	}
	h.waitEmpty(5 * time.Second)
	count := mx.Count()
	for i := range n {
		if got := count[fmt.Sprintf("r%d@example.org", i)]; got != 1 {
			t.Errorf("r%d delivered %d times", i, got)
		}
	}
	sessions := mx.Sessions.Load()
	t.Logf("%d messages over %d connections", n, sessions)
	if sessions >= n {
		t.Errorf("%d connections for %d messages: no reuse", sessions, n)
	}
	if sessions < n/3 {
		t.Errorf("%d connections for %d messages: more than max_messages 3 per connection", sessions, n)
	}
}

// A cached connection that the MX closed is noticed (at the RSET before
// the next message) and the message goes on a new connection, once.
func TestConnectionReuseDeadConnection(t *testing.T) {
	h := newHarness(t, "127.0.0.2")
	h.queue["connection_cache"] = map[string]any{"idle_timeout": "30s"}
	h.load()
	old := h.mx["127.0.0.2"]
	h.send("alice@example.test", []string{"bob@example.org"}, message("first", "bob@example.org"))
	if !old.WaitMessages(1, 10*time.Second) {
		t.Fatal("first message not delivered")
	}
	h.waitEmpty(5 * time.Second)
	// The MX goes away, closing the cached connection, and another takes
	// its address.
	old.Close()
	mx := testenv.StartMX(t, old.Addr, testenv.MXOptions{})
	h.send("alice@example.test", []string{"carol@example.org"}, message("second", "carol@example.org"))
	if !mx.WaitMessages(1, 10*time.Second) {
		t.Fatalf("second message not delivered: %+v", h.list())
	}
	h.waitEmpty(5 * time.Second)
	if got := mx.Count(); len(got) != 1 || got["carol@example.org"] != 1 {
		t.Errorf("new MX got %v", got)
	}
	if got := len(old.Messages()); got != 1 {
		t.Errorf("old MX got %d messages", got)
	}
	if s := mx.Sessions.Load(); s != 1 {
		t.Errorf("new MX: %d connections, want 1", s)
	}
}

// A connection is only reused under the TLS policy it was set up for: a
// plain-text connection cached for example.org (opportunistic TLS, and the
// MX offers no STARTTLS) is not used for example.com, whose destination
// policy requires TLS, although both have the same MX host. That message
// waits; the next one for example.org takes the cached connection. An
// idle connection is closed after idle_timeout.
func TestConnectionReuseOnlyUnderTheSamePolicy(t *testing.T) {
	h := newHarness(t, "127.0.0.2")
	h.dns.Add(t, "example.com. 300 IN MX 10 mx1.example.org.")
	h.queue["connection_cache"] = map[string]any{"idle_timeout": "1s"}
	h.queue["destinations"] = []any{map[string]any{"domains": []string{"example.com"}, "tls": "require"}}
	h.load()
	mx := h.mx["127.0.0.2"]
	h.send("alice@example.test", []string{"bob@example.org"}, message("plain", "bob@example.org"))
	if !mx.WaitMessages(1, 10*time.Second) {
		t.Fatal("not delivered")
	}
	h.waitEmpty(5 * time.Second)
	id := h.send("alice@example.test", []string{"dave@example.com"}, message("needs TLS", "dave@example.com"))
	var entries []string
	if !testenv.WaitFor(10*time.Second, func() bool {
		entries = nil
		for _, e := range h.list() {
			if e.Attempts > 0 {
				entries = append(entries, e.LastError)
			}
		}
		return len(entries) > 0
	}) {
		t.Fatal("no attempt for example.com")
	}
	if !strings.Contains(entries[0], "STARTTLS") {
		t.Errorf("example.com deferred with %q, want a STARTTLS requirement", entries[0])
	}
	if got := len(mx.Messages()); got != 1 {
		t.Fatalf("the MX got %d messages: the require policy used a plain connection", got)
	}
	// No more retries for example.com (each opens a connection).
	h.api("DELETE", "/smtp/queue/"+id, nil)
	h.waitEmpty(5 * time.Second)
	sessions := mx.Sessions.Load()
	if sessions < 2 {
		t.Errorf("%d connections, want one per policy", sessions)
	}
	h.send("alice@example.test", []string{"erin@example.org"}, message("reuse", "erin@example.org"))
	if !mx.WaitMessages(2, 10*time.Second) {
		t.Fatal("not delivered")
	}
	if s := mx.Sessions.Load(); s != sessions {
		t.Errorf("%d connections after the second example.org message, want %d (reused)", s, sessions)
	}
	// After idle_timeout the connection is closed: the next message opens
	// a new one.
	time.Sleep(1500 * time.Millisecond)
	h.send("alice@example.test", []string{"frank@example.org"}, message("after idle", "frank@example.org"))
	if !mx.WaitMessages(3, 10*time.Second) {
		t.Fatal("not delivered")
	}
	if s := mx.Sessions.Load(); s != sessions+1 {
		t.Errorf("%d connections after the idle timeout, want %d", s, sessions+1)
	}
}

// connection_cache off: one connection per message.
func TestConnectionCacheOff(t *testing.T) {
	h := newHarness(t, "127.0.0.2")
	h.queue["connection_cache"] = map[string]any{"disable": true}
	h.load()
	mx := h.mx["127.0.0.2"]
	for i := range 3 {
		to := fmt.Sprintf("r%d@example.org", i)
		h.send("alice@example.test", []string{to}, message(fmt.Sprint("off ", i), to))
		if !mx.WaitMessages(i+1, 10*time.Second) {
			t.Fatal("not delivered")
		}
	}
	if s := mx.Sessions.Load(); s != 3 {
		t.Errorf("%d connections for 3 messages, want 3", s)
	}
}
