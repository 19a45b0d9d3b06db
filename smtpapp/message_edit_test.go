package smtpapp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// editMessages returns msg read into memory and spooled to a file, and
// the same after the server removed a forged field (head/skip set).
func editMessages(t *testing.T, raw string) map[string]*Message {
	t.Helper()
	out := map[string]*Message{}
	for _, kind := range []string{"memory", "spooled", "memory-removed", "spooled-removed"} {
		budget := newMemoryBudget(1 << 20)
		if strings.HasPrefix(kind, "spooled") {
			budget = newMemoryBudget(0)
		}
		src := raw
		if strings.HasSuffix(kind, "-removed") {
			src = "Return-Path: <forged@x>\r\n" + raw
		}
		m, err := readMessage(strings.NewReader(src), budget, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if (m.file != nil) != strings.HasPrefix(kind, "spooled") && len(src) <= memPerMessage {
			t.Fatalf("%s: file=%v", kind, m.file != nil)
		}
		if strings.HasSuffix(kind, "-removed") {
			if err := m.removeHeaderFields(func(name, _ []byte) bool { return string(name) == "Return-Path" }); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(m.Discard)
		out[kind] = m
	}
	return out
}

func body(t *testing.T, m *Message) string {
	t.Helper()
	b, err := io.ReadAll(m.Body())
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != m.Size() {
		t.Fatalf("Size %d, body %d bytes", m.Size(), len(b))
	}
	var w bytes.Buffer
	if _, err := m.WriteTo(&w); err != nil || w.String() != string(m.header)+string(b) {
		t.Fatalf("WriteTo %q (%v), Body %q", w.String(), err, b)
	}
	return string(b)
}

const editRaw = "From: a@example.org\r\nX-Spam: yes\r\nSubject: hi\r\n there\r\nX-Spam: no\r\nTo: b@example.test\r\n\r\nX-Spam: body line\r\nbye\r\n"

func TestMessageEdits(t *testing.T) {
	cases := []struct {
		name string
		edit func(m *Message) error
		want string
	}{
		{"delete first", func(m *Message) error { return m.DeleteHeader("x-spam", 1) },
			"From: a@example.org\r\nSubject: hi\r\n there\r\nX-Spam: no\r\nTo: b@example.test\r\n\r\nX-Spam: body line\r\nbye\r\n"},
		{"delete last", func(m *Message) error { return m.DeleteHeader("X-Spam", -1) },
			"From: a@example.org\r\nX-Spam: yes\r\nSubject: hi\r\n there\r\nTo: b@example.test\r\n\r\nX-Spam: body line\r\nbye\r\n"},
		{"delete all", func(m *Message) error { return m.DeleteHeader("X-SPAM", 0) },
			"From: a@example.org\r\nSubject: hi\r\n there\r\nTo: b@example.test\r\n\r\nX-Spam: body line\r\nbye\r\n"},
		{"delete folded", func(m *Message) error { return m.DeleteHeader("Subject", 1) },
			"From: a@example.org\r\nX-Spam: yes\r\nX-Spam: no\r\nTo: b@example.test\r\n\r\nX-Spam: body line\r\nbye\r\n"},
		{"change second", func(m *Message) error { return m.ChangeHeader("x-spam", 2, "maybe") },
			"From: a@example.org\r\nX-Spam: yes\r\nSubject: hi\r\n there\r\nX-Spam: maybe\r\nTo: b@example.test\r\n\r\nX-Spam: body line\r\nbye\r\n"},
		{"change folded with LF", func(m *Message) error { return m.ChangeHeader("Subject", 1, "new\n\tfolded") },
			"From: a@example.org\r\nX-Spam: yes\r\nSubject: new\r\n\tfolded\r\nX-Spam: no\r\nTo: b@example.test\r\n\r\nX-Spam: body line\r\nbye\r\n"},
		{"insert top", func(m *Message) error { return m.InsertHeader(0, "DKIM-Signature", "v=1; d=x") },
			"DKIM-Signature: v=1; d=x\r\nFrom: a@example.org\r\nX-Spam: yes\r\nSubject: hi\r\n there\r\nX-Spam: no\r\nTo: b@example.test\r\n\r\nX-Spam: body line\r\nbye\r\n"},
		{"insert middle", func(m *Message) error { return m.InsertHeader(1, "X-New", " lead") },
			"From: a@example.org\r\nX-New: lead\r\nX-Spam: yes\r\nSubject: hi\r\n there\r\nX-Spam: no\r\nTo: b@example.test\r\n\r\nX-Spam: body line\r\nbye\r\n"},
		{"append", func(m *Message) error { return m.AppendHeader("X-New", "v\r\nInjected: 1") },
			"From: a@example.org\r\nX-Spam: yes\r\nSubject: hi\r\n there\r\nX-Spam: no\r\nTo: b@example.test\r\nX-New: v  Injected: 1\r\n\r\nX-Spam: body line\r\nbye\r\n"},
		{"several", func(m *Message) error {
			if err := m.DeleteHeader("X-Spam", 0); err != nil {
				return err
			}
			if err := m.InsertHeader(0, "A", "1"); err != nil {
				return err
			}
			if err := m.AppendHeader("Z", "2"); err != nil {
				return err
			}
			return m.ChangeHeader("to", 1, "c@example.test")
		}, "A: 1\r\nFrom: a@example.org\r\nSubject: hi\r\n there\r\nTo: c@example.test\r\nZ: 2\r\n\r\nX-Spam: body line\r\nbye\r\n"},
	}
	for _, tc := range cases {
		for kind, m := range editMessages(t, editRaw) {
			m.AddHeader("Received", "by us")
			if err := tc.edit(m); err != nil {
				t.Fatalf("%s/%s: %v", tc.name, kind, err)
			}
			if got := body(t, m); got != tc.want {
				t.Errorf("%s/%s:\n got %q\nwant %q", tc.name, kind, got, tc.want)
			}
			if string(m.Header()) != "Received: by us\r\n" {
				t.Errorf("%s/%s: added fields changed: %q", tc.name, kind, m.Header())
			}
		}
	}
}

func TestMessageEditErrors(t *testing.T) {
	for kind, m := range editMessages(t, editRaw) {
		if err := m.DeleteHeader("X-Spam", 3); !errors.Is(err, ErrNoHeaderField) {
			t.Errorf("%s: delete 3rd = %v", kind, err)
		}
		if err := m.DeleteHeader("Nope", 0); !errors.Is(err, ErrNoHeaderField) {
			t.Errorf("%s: delete missing = %v", kind, err)
		}
		if err := m.ChangeHeader("X-Spam", 0, "x"); !errors.Is(err, ErrNoHeaderField) {
			t.Errorf("%s: change 0 = %v", kind, err)
		}
		if err := m.InsertHeader(0, "Bad Name", "x"); err == nil {
			t.Errorf("%s: bad name accepted", kind)
		}
		if err := m.InsertHeader(0, "", "x"); err == nil {
			t.Errorf("%s: empty name accepted", kind)
		}
		if got := body(t, m); got != editRaw {
			t.Errorf("%s: failed edits changed the body: %q", kind, got)
		}
		fs, err := m.HeaderFields()
		if err != nil || len(fs) != 5 || fs[2] != (HeaderField{"Subject", "hi\r\n there"}) {
			t.Errorf("%s: HeaderFields = %q, %v", kind, fs, err)
		}
	}
}

func TestMessageEditLimits(t *testing.T) {
	// A header section near the limit: an insert past it is refused
	// and leaves the message as it was.
	big := "X-Big: " + strings.Repeat("a", maxHeaderSection-100) + "\r\n\r\nbody\r\n"
	for kind, m := range editMessages(t, big) {
		if err := m.InsertHeader(0, "X-More", strings.Repeat("b", 200)); !errors.Is(err, errHeaderTooLarge) {
			t.Errorf("%s: insert over the limit = %v", kind, err)
		}
		if got := body(t, m); got != big {
			t.Errorf("%s: body changed", kind)
		}
	}
	// No empty line: the whole body is the header section.
	for kind, m := range editMessages(t, "Subject: x\r\n") {
		if err := m.AppendHeader("X-A", "1"); err != nil {
			t.Fatal(err)
		}
		if got := body(t, m); got != "Subject: x\r\nX-A: 1\r\n" {
			t.Errorf("%s: %q", kind, got)
		}
	}
	// Empty header section.
	for kind, m := range editMessages(t, "\r\nbody\r\n") {
		if err := m.InsertHeader(0, "X-A", "1"); err != nil {
			t.Fatal(err)
		}
		want := "X-A: 1\r\n\r\nbody\r\n"
		if strings.HasSuffix(kind, "-removed") {
			want = "X-A: 1\r\n\r\nbody\r\n"
		}
		if got := body(t, m); got != want {
			t.Errorf("%s: %q", kind, got)
		}
	}
}
