package smtpapp

import (
	"net/netip"
	"testing"
)

func TestCeiling(t *testing.T) {
	c := &ceiling{perNet: map[netip.Prefix]int{}, max: 4, maxPerNet: 2}
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	b2 := netip.MustParseAddr("2001:db8::ffff") // same /64
	mapped := netip.MustParseAddr("::ffff:192.0.2.1")
	steps := []struct {
		ip     netip.Addr
		want   *Error
		stress bool
	}{
		{a, nil, false},
		{mapped, nil, false}, // the same client as a
		{a, replyTooManyFromYou, false},
		{b, nil, true}, // 3 of 4: over half
		{b2, nil, true},
		{b, replyTooBusy, true},
	}
	for i, s := range steps {
		if got := c.admit(s.ip); got != s.want || c.stress.Load() != s.stress {
			t.Fatalf("step %d (%s): got %v stress %v, want %v stress %v", i, s.ip, got, c.stress.Load(), s.want, s.stress)
		}
	}
	c.release(b)
	c.release(b2)
	if c.stress.Load() || len(c.perNet) != 1 {
		t.Fatalf("after release: stress %v, networks %v", c.stress.Load(), c.perNet)
	}
}
