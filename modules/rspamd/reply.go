package rspamd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// The actions rspamd's /checkv2 reply may carry.
const (
	actNoAction       = "no action"
	actGreylist       = "greylist"
	actAddHeader      = "add header"
	actRewriteSubject = "rewrite subject"
	actSoftReject     = "soft reject"
	actReject         = "reject"
)

// Bounds on what a reply may make us do.
const (
	maxReplySize    = 4 << 20 // bytes of JSON read
	maxHeaderEdits  = 64      // added plus removed fields
	maxHeaderValue  = 8 << 10 // bytes of one added field
	maxReplyMessage = 200     // bytes of the SMTP reply text
	maxSymbols      = 1000
)

// result is a parsed /checkv2 reply.
type result struct {
	skipped  bool
	action   string
	score    float64
	required float64
	message  string   // smtp_message: the reply text for a refusal
	subject  string   // the new Subject for "rewrite subject"
	symbols  []symbol // sorted by name
	add      []addHeader
	remove   []removeHeader
}

type symbol struct {
	Name  string  `json:"name"`
	Score float64 `json:"score"`
}

type addHeader struct {
	name, value string
	order       int // -1: at the bottom
}

type removeHeader struct {
	name  string
	index int // 0: every field of that name
}

type wireReply struct {
	Skipped  bool                       `json:"is_skipped"`
	Score    float64                    `json:"score"`
	Required float64                    `json:"required_score"`
	Action   string                     `json:"action"`
	Subject  string                     `json:"subject"`
	Symbols  map[string]symbol          `json:"symbols"`
	Messages map[string]json.RawMessage `json:"messages"`
	Milter   *struct {
		Add    map[string]json.RawMessage `json:"add_headers"`
		Remove map[string]json.RawMessage `json:"remove_headers"`
	} `json:"milter"`
}

var errBadReply = errors.New("bad rspamd reply")

// parseReply reads rspamd's JSON reply. Anything that is not the shape
// rspamd documents, or an unknown action, is an error (the failure policy
// then applies); header names that are not valid field names are dropped.
func parseReply(b []byte) (*result, error) {
	var w wireReply
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("%w: %v", errBadReply, err)
	}
	r := &result{skipped: w.Skipped, action: w.Action, score: w.Score, required: w.Required, subject: printable(w.Subject, maxHeaderValue)}
	switch w.Action {
	case actNoAction, actGreylist, actAddHeader, actRewriteSubject, actSoftReject, actReject:
	default:
		return nil, fmt.Errorf("%w: unknown action %q", errBadReply, printable(w.Action, 40))
	}
	if math.IsNaN(r.score) || math.IsInf(r.score, 0) {
		return nil, fmt.Errorf("%w: score %v", errBadReply, r.score)
	}
	if raw, ok := w.Messages["smtp_message"]; ok {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			r.message = printable(s, maxReplyMessage)
		}
	}
	if len(w.Symbols) > maxSymbols {
		return nil, fmt.Errorf("%w: %d symbols", errBadReply, len(w.Symbols))
	}
	for name, s := range w.Symbols {
		if s.Name == "" {
			s.Name = name
		}
		s.Name = printable(s.Name, 64)
		if math.IsNaN(s.Score) || math.IsInf(s.Score, 0) {
			s.Score = 0
		}
		r.symbols = append(r.symbols, s)
	}
	sort.Slice(r.symbols, func(i, j int) bool { return r.symbols[i].Name < r.symbols[j].Name })
	if w.Milter != nil {
		if err := r.milterEdits(w.Milter.Add, w.Milter.Remove); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// milterEdits reads rspamd's header actions: add_headers values are a
// string, {"value": v, "order": n}, or a list of those; remove_headers
// values are the 1-based index of the field to remove (negative from the
// bottom, 0 for all of them).
func (r *result) milterEdits(add, remove map[string]json.RawMessage) error {
	for _, name := range sortedKeys(remove) {
		var idx float64
		if err := json.Unmarshal(remove[name], &idx); err != nil || idx != math.Trunc(idx) || math.Abs(idx) > 1000 {
			return fmt.Errorf("%w: remove_headers %q", errBadReply, printable(name, 40))
		}
		if validName(name) {
			r.remove = append(r.remove, removeHeader{name: name, index: int(idx)})
		}
	}
	type entry struct {
		Value *string  `json:"value"`
		Order *float64 `json:"order"`
	}
	for _, name := range sortedKeys(add) {
		raw := bytes.TrimSpace(add[name])
		var entries []entry
		switch {
		case len(raw) > 0 && raw[0] == '"':
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return fmt.Errorf("%w: add_headers %q", errBadReply, printable(name, 40))
			}
			entries = []entry{{Value: &s}}
		case len(raw) > 0 && raw[0] == '[':
			if err := json.Unmarshal(raw, &entries); err != nil {
				return fmt.Errorf("%w: add_headers %q", errBadReply, printable(name, 40))
			}
		default:
			var e entry
			if err := json.Unmarshal(raw, &e); err != nil {
				return fmt.Errorf("%w: add_headers %q", errBadReply, printable(name, 40))
			}
			entries = []entry{e}
		}
		if !validName(name) {
			continue
		}
		for _, e := range entries {
			if e.Value == nil {
				continue
			}
			order := -1
			if e.Order != nil && *e.Order >= 0 && *e.Order < 1000 {
				order = int(*e.Order)
			}
			r.add = append(r.add, addHeader{name: name, value: headerValue(*e.Value), order: order})
		}
	}
	if len(r.add)+len(r.remove) > maxHeaderEdits {
		return fmt.Errorf("%w: %d header edits", errBadReply, len(r.add)+len(r.remove))
	}
	return nil
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// validName is a header field name: printable ASCII without colon, at
// most 76 bytes.
func validName(s string) bool {
	if s == "" || len(s) > 76 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if ch := s[i]; ch <= 0x20 || ch >= 0x7f || ch == ':' {
			return false
		}
	}
	return true
}

// headerValue bounds a value from rspamd; folding (LF or CRLF + white
// space) is kept, smtpapp neutralises any other line break.
func headerValue(s string) string {
	if len(s) > maxHeaderValue {
		s = s[:maxHeaderValue]
	}
	return strings.ToValidUTF8(s, "?")
}

// printable keeps printable ASCII (others become '?'), at most n bytes:
// for reply texts and log fields.
func printable(s string, n int) string {
	b := make([]byte, 0, min(len(s), n))
	for i := 0; i < len(s) && len(b) < n; i++ {
		if ch := s[i]; ch >= 0x20 && ch < 0x7f {
			b = append(b, ch)
		} else {
			b = append(b, '?')
		}
	}
	return string(b)
}

// scored are the symbols with a non-zero score, as "NAME(1.5)".
func (r *result) scored() []string {
	var out []string
	for _, s := range r.symbols {
		if s.Score != 0 {
			out = append(out, s.Name+"("+strconv.FormatFloat(math.Round(s.Score*100)/100, 'f', -1, 64)+")")
		}
	}
	return out
}

// names are all the symbols' names.
func (r *result) names() []string {
	out := make([]string, len(r.symbols))
	for i, s := range r.symbols {
		out[i] = s.Name
	}
	return out
}
