package rspamd

import (
	"strings"
	"testing"
)

// FuzzParseReply: any bytes from rspamd give a result or an error, never
// a panic; a result carries only a known action, valid field names, and
// reply texts and symbol names that are printable ASCII within bounds.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		`{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"undef","time_real":0.207027}`,
		`{"is_skipped":false,"score":4.2,"required_score":15.0,"action":"greylist","symbols":{"MIME_GOOD":{"name":"MIME_GOOD","score":-0.1,"options":["text/plain"]}},"messages":{},"milter":{"remove_headers":{"X-Spam":0}}}`,
		`{"action":"add header","score":6,"milter":{"add_headers":{"X-Spam":"Yes","X-A":{"value":"v","order":0},"X-B":[{"value":"1"},{"value":"2","order":3}]},"remove_headers":{"X-C":-1}}}`,
		`{"action":"rewrite subject","subject":"***SPAM*** x\r\nBcc: evil"}`,
		`{"action":"no action","score":1e309}`,
		`{"action":"soft reject","messages":{"smtp_message":"\u0000bad\r\n550 x"}}`,
		`not json`, `{}`, `[]`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseReply(b)
		if err != nil {
			return
		}
		switch r.action {
		case actNoAction, actGreylist, actAddHeader, actRewriteSubject, actSoftReject, actReject:
		default:
			t.Fatalf("action %q", r.action)
		}
		if len(r.message) > maxReplyMessage || strings.ContainsAny(r.message, "\r\n\x00") {
			t.Fatalf("message %q", r.message)
		}
		for _, s := range r.symbols {
			if strings.ContainsAny(s.Name, "\r\n") || len(s.Name) > 64 {
				t.Fatalf("symbol %q", s.Name)
			}
		}
		if len(r.add)+len(r.remove) > maxHeaderEdits {
			t.Fatalf("%d edits", len(r.add)+len(r.remove))
		}
		for _, a := range r.add {
			if !validName(a.name) || len(a.value) > maxHeaderValue {
				t.Fatalf("add %q", a.name)
			}
		}
		for _, rm := range r.remove {
			if !validName(rm.name) {
				t.Fatalf("remove %q", rm.name)
			}
		}
		_ = foldList(r.names())
		_ = r.scored()
	})
}
