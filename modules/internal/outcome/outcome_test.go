package outcome

import (
	"errors"
	"fmt"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

type cfg struct{ A, B, T *Outcome }

var settings = []Setting[cfg]{
	{Name: "a", Default: Outcome{Score: 2}, Field: func(c *cfg) **Outcome { return &c.A }, Actions: All},
	{Name: "b", Default: Outcome{Action: Reject}, Field: func(c *cfg) **Outcome { return &c.B }, Actions: NoDefer},
	{Name: "temperror", Field: func(c *cfg) **Outcome { return &c.T }, Actions: TempError},
}

func TestResolve(t *testing.T) {
	t.Parallel()
	got, err := Resolve(&cfg{T: &Outcome{Action: Defer}}, settings)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Outcome{"a": {Action: Score, Score: 2}, "b": {Action: Reject}, "temperror": {Action: Defer}}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %+v, want %+v", k, got[k], v)
		}
	}
	for _, tc := range []struct {
		c    cfg
		want string
	}{
		{cfg{A: &Outcome{Action: "drop"}}, `a.action: "drop" is not "score", "reject" or "defer"`},
		{cfg{B: &Outcome{Action: Defer}}, `b.action: "defer" is not "score" or "reject"`},
		{cfg{T: &Outcome{Action: Reject}}, `temperror.action: a DNS failure must not refuse mail for good; use "defer" or "score"`},
	} {
		if _, err := Resolve(&tc.c, settings); err == nil || err.Error() != tc.want {
			t.Errorf("got %v, want %s", err, tc.want)
		}
	}
}

func TestUnmarshal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, want string
		all      bool
	}{
		{"a reject", "{Action:reject Score:0}", true},
		{"temperror defer", "{Action:defer Score:0}", true},
		{"temperror reject", "{Action:reject Score:0}", true}, // refused by Resolve, not here
		{"a -1.5", "{Action: Score:-1.5}", true},
		{"a score 3", "{Action: Score:3}", true},
		{"a maybe", `a: "maybe" is not reject, defer or a score, at Testfile:1`, true},
		{"a score", `a: "score" is not reject, defer or a score, at Testfile:1`, true},
		{"a 1 2", `a: want reject, defer or a score, at Testfile:1`, true},
		{"b defer", `b: "defer" is not reject or a score, at Testfile:1`, false},
		{"b", `b: want reject or a score, at Testfile:1`, false},
	} {
		s := settings
		if !tc.all {
			s = settings[1:2]
		}
		d := caddyfile.NewTestDispenser(tc.in)
		d.Next()
		var c cfg
		ok, err := Unmarshal(d, &c, s)
		if !ok {
			t.Fatalf("%s: not recognized", tc.in)
		}
		var got string
		if err != nil {
			got = err.Error()
		} else {
			got = fmt.Sprintf("%+v", **map[byte]**Outcome{'a': &c.A, 'b': &c.B, 't': &c.T}[tc.in[0]])
		}
		if got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.in, got, tc.want)
		}
	}
	d := caddyfile.NewTestDispenser("nope 1")
	d.Next()
	if ok, _ := Unmarshal(d, &cfg{}, settings); ok {
		t.Error("nope: recognized")
	}
}

func TestApplyRefusals(t *testing.T) {
	t.Parallel()
	rej, def := errors.New("550"), errors.New("451")
	if err := (Outcome{Action: Reject}).Apply(nil, "m", "r", rej, def); err != rej {
		t.Errorf("reject: %v", err)
	}
	if err := (Outcome{Action: Defer}).Apply(nil, "m", "r", rej, def); err != def {
		t.Errorf("defer: %v", err)
	}
	if err := (Outcome{Action: Score}).Apply(nil, "m", "r", rej, def); err != nil {
		t.Errorf("score 0: %v", err)
	}
}
