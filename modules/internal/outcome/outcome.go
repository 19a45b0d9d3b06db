// Package outcome holds what the check handlers (spf, helo, dmarc) share
// about the outcome of a check result: the config type
// ({"action": "score"|"reject"|"defer", "score": N}), its defaults and
// validation, its Caddyfile syntax, and carrying it out on a connection.
//
// Each module keeps its own table of settings (names, defaults, the
// actions each allows) and its own replies.
package outcome

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// The actions of an outcome.
const (
	Score  = "score"
	Reject = "reject"
	Defer  = "defer"
)

// Outcome is what a check result leads to.
type Outcome struct {
	// Action: "score" (default) adds Score to the spam score; "reject"
	// refuses the mail for good (5xx); "defer" refuses it for now (4xx) so
	// the client tries again later. The handler's documentation tells
	// which command is refused, with which reply, and which of its
	// settings allow "reject" or "defer".
	Action string `json:"action,omitempty"`
	// Score is the points added to the spam score (negative for a good
	// sign).
	Score float64 `json:"score,omitempty"`
}

// Actions is a set of actions a setting allows; "score" is always one.
type Actions struct {
	reject, deferral bool
}

var (
	// All allows "score", "reject" and "defer".
	All = Actions{reject: true, deferral: true}
	// NoDefer allows "score" and "reject".
	NoDefer = Actions{reject: true}
	// TempError allows "score" and "defer": for a temporary (DNS) failure,
	// which must not refuse mail for good.
	TempError = Actions{deferral: true}
)

func (a Actions) allows(action string) bool {
	switch action {
	case Score:
		return true
	case Reject:
		return a.reject
	case Defer:
		return a.deferral
	}
	return false
}

func (a Actions) union(b Actions) Actions {
	return Actions{reject: a.reject || b.reject, deferral: a.deferral || b.deferral}
}

// list names the actions for messages: quoted ("score", "reject" or
// "defer"), or as the Caddyfile spells them (reject, defer or a score).
func (a Actions) list(caddyfile bool) string {
	q := strconv.Quote
	if caddyfile {
		q = func(s string) string { return s }
	}
	var names []string
	if !caddyfile {
		names = append(names, q(Score))
	}
	if a.reject {
		names = append(names, q(Reject))
	}
	if a.deferral {
		names = append(names, q(Defer))
	}
	if caddyfile {
		names = append(names, "a score")
	}
	last := len(names) - 1
	if last == 0 {
		return names[0]
	}
	return strings.Join(names[:last], ", ") + " or " + names[last]
}

// Setting is one outcome setting of a module config C.
type Setting[C any] struct {
	// Name is the setting's name in JSON and in the Caddyfile.
	Name string
	// Default applies when the setting is not set.
	Default Outcome
	// Field returns the setting's field in a config.
	Field func(*C) **Outcome
	// Actions are the actions allowed.
	Actions Actions
}

// Resolve returns the outcome of each setting of cfg by name: the one
// set, or the default, with its action checked ("" is "score"). Errors
// name the setting ("temperror.action: ...").
func Resolve[C any](cfg *C, settings []Setting[C]) (map[string]Outcome, error) {
	out := make(map[string]Outcome, len(settings))
	for _, s := range settings {
		o := s.Default
		if p := *s.Field(cfg); p != nil {
			o = *p
		}
		if o.Action == "" {
			o.Action = Score
		}
		switch {
		case s.Actions.allows(o.Action):
		case o.Action == Reject && s.Actions.deferral:
			return nil, fmt.Errorf("%s.action: a DNS failure must not refuse mail for good; use \"defer\" or \"score\"", s.Name)
		default:
			return nil, fmt.Errorf("%s.action: %q is not %s", s.Name, o.Action, s.Actions.list(false))
		}
		out[s.Name] = o
	}
	return out, nil
}

// Unmarshal parses a Caddyfile outcome line,
//
//	<setting> reject|defer|<score>|score <score>
//
// with the dispenser on <setting>, into cfg. It reports false (and does
// nothing) when no setting has that name. The syntax takes every action
// that some setting allows; Resolve checks the action of each.
func Unmarshal[C any](d *caddyfile.Dispenser, cfg *C, settings []Setting[C]) (bool, error) {
	opt := d.Val()
	var field **Outcome
	var allowed Actions
	for _, s := range settings {
		allowed = allowed.union(s.Actions)
		if s.Name == opt {
			field = s.Field(cfg)
		}
	}
	if field == nil {
		return false, nil
	}
	args := d.RemainingArgs()
	o := &Outcome{}
	switch {
	case len(args) == 1 && args[0] != Score && allowed.allows(args[0]):
		o.Action = args[0]
	case len(args) == 1 || len(args) == 2 && args[0] == Score:
		f, err := strconv.ParseFloat(args[len(args)-1], 64)
		if err != nil {
			return true, d.Errf("%s: %q is not %s", opt, args[len(args)-1], allowed.list(true))
		}
		o.Score = f
	default:
		return true, d.Errf("%s: want %s", opt, allowed.list(true))
	}
	*field = o
	return true, nil
}

// Apply carries out a resolved outcome on the connection: for "reject"
// it returns reject, for "defer" deferral (the caller sends the refusal
// at once or later); for "score" it adds Score, unless 0, to the spam
// score with module and reason, and returns nil.
func (o Outcome) Apply(c *smtpapp.Conn, module, reason string, reject, deferral error) error {
	switch o.Action {
	case Reject:
		return reject
	case Defer:
		return deferral
	}
	if o.Score != 0 {
		c.AddScore(module, o.Score, reason)
	}
	return nil
}
