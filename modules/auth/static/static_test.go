package static

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestCaddyfileForward(t *testing.T) {
	var s Static
	d := caddyfile.NewTestDispenser("static {\n forward info@example.test bob@example.test someone@example.org\n}")
	if err := s.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if len(s.Forwarding) != 1 || s.Forwarding[0].Address != "info@example.test" || strings.Join(s.Forwarding[0].To, ",") != "bob@example.test,someone@example.org" {
		t.Fatalf("forwarding = %+v", s.Forwarding)
	}
	s = Static{}
	if err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser("static {\n forward info@example.test\n}")); err == nil || !strings.Contains(err.Error(), "forward") {
		t.Fatalf("forward without a target: %v", err)
	}
}
