package mtasts

import (
	"testing"
	"time"
)

func TestParsePolicy(t *testing.T) {
	for _, c := range []struct {
		name, in string
		ok       bool
		mode     Mode
		maxAge   time.Duration
		mx       int
	}{
		{"enforce", "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n", true, ModeEnforce, 86400 * time.Second, 2},
		{"LF only, any order", "mode: testing\nmx: mx.example.com\nmax_age: 60\nversion: STSv1\n", true, ModeTesting, time.Minute, 1},
		{"none without mx", "version: STSv1\r\nmode: none\r\nmax_age: 0\r\n", true, ModeNone, 0, 0},
		{"unknown keys ignored", "version: STSv1\r\nmode: enforce\r\nmx: a.b\r\nmax_age: 5\r\nfoo: bar\r\n", true, ModeEnforce, 5 * time.Second, 1},
		{"max_age capped", "version: STSv1\r\nmode: none\r\nmax_age: 99999999999\r\n", false, "", 0, 0},
		{"max_age over a year", "version: STSv1\r\nmode: none\r\nmax_age: 40000000\r\n", true, ModeNone, MaxAgeLimit * time.Second, 0},
		{"no version", "mode: enforce\r\nmx: a.b\r\nmax_age: 5\r\n", false, "", 0, 0},
		{"bad version", "version: STSv2\r\nmode: enforce\r\nmx: a.b\r\nmax_age: 5\r\n", false, "", 0, 0},
		{"bad mode", "version: STSv1\r\nmode: strict\r\nmx: a.b\r\nmax_age: 5\r\n", false, "", 0, 0},
		{"enforce without mx", "version: STSv1\r\nmode: enforce\r\nmax_age: 5\r\n", false, "", 0, 0},
		{"no max_age", "version: STSv1\r\nmode: none\r\n", false, "", 0, 0},
		{"negative max_age", "version: STSv1\r\nmode: none\r\nmax_age: -1\r\n", false, "", 0, 0},
		{"bad mx", "version: STSv1\r\nmode: enforce\r\nmx: a b\r\nmax_age: 5\r\n", false, "", 0, 0},
		{"not key: value", "version: STSv1\r\nhello\r\n", false, "", 0, 0},
		{"mode twice", "version: STSv1\r\nmode: none\r\nmode: enforce\r\nmx: a.b\r\nmax_age: 5\r\n", false, "", 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(c.in))
			if (err == nil) != c.ok {
				t.Fatalf("err = %v, want ok=%v", err, c.ok)
			}
			if err != nil {
				return
			}
			if p.Mode != c.mode || p.MaxAge != c.maxAge || len(p.MX) != c.mx {
				t.Errorf("got %+v", p)
			}
			// The policy-string round-trips.
			q, err := ParsePolicy([]byte(p.String()))
			if err != nil || q.String() != p.String() {
				t.Errorf("round trip: %v %q", err, p.String())
			}
		})
	}
}

func TestMatchPattern(t *testing.T) {
	for _, c := range []struct {
		pattern, host string
		want          bool
	}{
		{"mx.example.com", "mx.example.com", true},
		{"mx.example.com", "MX.Example.COM.", true},
		{"mx.example.com", "mx2.example.com", false},
		{"*.example.com", "mx.example.com", true},
		{"*.example.com", "a.b.example.com", false},
		{"*.example.com", "example.com", false},
		{"*.example.com", "mxexample.com", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "*.example.com", false},
		{"", "example.com", false},
		{"example.com", "", false},
	} {
		if got := MatchPattern(c.pattern, c.host); got != c.want {
			t.Errorf("MatchPattern(%q, %q) = %v, want %v", c.pattern, c.host, got, c.want)
		}
	}
}

func TestParseTXT(t *testing.T) {
	for _, c := range []struct {
		txts []string
		id   string
		ok   bool
	}{
		{[]string{"v=STSv1; id=20160831085700Z;"}, "20160831085700Z", true},
		{[]string{"v=STSv1;id=abc"}, "abc", true},
		{[]string{"v=spf1 -all", "v=STSv1; id=x1"}, "x1", true},
		{[]string{"v=STSv1; id=1", "v=STSv1; id=2"}, "", false},
		{[]string{"v=STSv1; id=bad-id"}, "", false},
		{[]string{"v=STSv1;"}, "", false},
		{[]string{"v=STSv1; id=123456789012345678901234567890123"}, "", false},
		{nil, "", false},
		{[]string{"id=1; v=STSv1"}, "", false},
	} {
		id, err := ParseTXT(c.txts)
		if (err == nil) != c.ok || id != c.id {
			t.Errorf("ParseTXT(%q) = %q, %v", c.txts, id, err)
		}
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n"))
	f.Add([]byte("version: STSv1\nmode: none\nmax_age: 0\n"))
	f.Add([]byte("mode: testing\r\nmx: a\r\nversion: STSv1\r\nmax_age: 31557600\r\n"))
	f.Add([]byte("version:STSv1\r\nmode:enforce\r\nmx:*.b\r\nmax_age:1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePolicy(b)
		if err != nil {
			return
		}
		if p.MaxAge < 0 || p.MaxAge > MaxAgeLimit*time.Second {
			t.Fatalf("max_age %v", p.MaxAge)
		}
		if p.Mode != ModeNone && len(p.MX) == 0 {
			t.Fatal("enforce/testing without mx")
		}
		q, err := ParsePolicy([]byte(p.String()))
		if err != nil || q.String() != p.String() {
			t.Fatalf("round trip of %q: %v", p.String(), err)
		}
		for _, mx := range p.MX {
			if len(mx) > 2 && mx[:2] == "*." && !MatchPattern(mx, "x"+mx[1:]) {
				t.Fatalf("pattern %q does not match x%s", mx, mx[1:])
			}
		}
	})
}
