package queue

import "testing"

// TestDKIMKeyOnlyForTheSendersDomain: a user of one hosted domain gets no
// signature for another hosted domain named in From.
func TestDKIMKeyOnlyForTheSendersDomain(t *testing.T) {
	a, b := &dkimKey{}, &dkimKey{}
	s := &settings{dkim: map[string][]*dkimKey{"a.test": {a}, "b.test": {b}}}
	from := func(v string) []headerField { return []headerField{{name: "From", value: v}} }
	for _, tc := range []struct {
		fields []headerField
		sender string
		want   *dkimKey
	}{
		{from("Alice <alice@a.test>"), "alice@a.test", a},
		{from("Boss <boss@b.test>"), "alice@a.test", nil},     // forged From for another tenant
		{nil, "alice@a.test", a},                              // no From: the sender's domain
		{from("Mail Delivery <MAILER-DAEMON@b.test>"), "", b}, // our own report
		{from("x@other.example"), "alice@a.test", nil},
	} {
		var got *dkimKey
		if keys := s.dkimKeysFor(tc.fields, tc.sender); len(keys) > 0 {
			got = keys[0]
		}
		if got != tc.want {
			t.Errorf("From %v, sender %q: got key %p, want %p", tc.fields, tc.sender, got, tc.want)
		}
	}
}
