package queue_test

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// A reload with shorter retry settings applies to messages already
// waiting; metrics count deliveries.
func TestReloadAppliesRetrySettings(t *testing.T) {
	h := newHarness(t, "127.0.0.2", "127.0.0.4")
	h.mx["127.0.0.4"].Close()
	h.dns.Add(t, "down.example. 300 IN MX 10 mx.down.example.", "mx.down.example. 300 IN A 127.0.0.4")
	h.queue["retry"] = map[string]any{"initial": "1h", "jitter": -1}
	h.load()
	h.send("alice@example.test", []string{"x@down.example"}, message("waiting", "x@down.example"))
	testenv.WaitFor(5*time.Second, func() bool {
		l := h.list()
		return len(l) == 1 && l[0].Attempts == 1 && !l[0].InFlight && l[0].NextTry != nil
	})
	mx := testenv.StartMX(t, fmt.Sprintf("127.0.0.4:%d", h.port), testenv.MXOptions{})
	h.queue["retry"] = map[string]any{"initial": "100ms", "max": "200ms", "jitter": -1}
	h.load()
	if !mx.WaitMessages(1, 3*time.Second) {
		t.Fatalf("the new retry settings did not apply to the waiting message: %+v", h.list())
	}
	h.waitEmpty(3 * time.Second)

	resp, err := adminClient.Get("http://" + h.env.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`caddy_smtp_queue_deliveries_total{result="deferred"}`, `caddy_smtp_queue_deliveries_total{result="delivered"}`, "caddy_smtp_queue_messages "} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
