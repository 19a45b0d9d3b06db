package smtpapp

import (
	"context"
	"errors"
	"testing"

	"go.uber.org/zap"
)

// target records what it was given and answers as told. The router is
// pure policy: the end-to-end tests run it against Maildir, LMTP and the
// queue; this table pins each branch without a network.
type target struct {
	name    string
	err     error
	got     [][]Recipient
	staged  bool
	commits *[]string
}

func (t *target) Deliver(_ context.Context, env *Envelope, _ *Message) error {
	t.got = append(t.got, env.Recipients)
	return t.err
}

type stagingTarget struct{ *target }

func (t stagingTarget) Stage(_ context.Context, env *Envelope, _ *Message) (func() error, func(), error) {
	t.got = append(t.got, env.Recipients)
	t.staged = true
	return func() error { *t.commits = append(*t.commits, "commit"); return nil },
		func() { *t.commits = append(*t.commits, "abort") }, t.err
}

type bouncingTarget struct {
	*target
	bounced []FailedRecipient
}

func (b *bouncingTarget) Bounce(_ context.Context, _ *Envelope, _ *Message, failed []FailedRecipient) error {
	b.bounced = append(b.bounced, failed...)
	return nil
}

func TestRouter(t *testing.T) {
	local := Recipient{Address: "alice@example.test", Mailbox: "alice@example.test"}
	remote := Recipient{Address: "someone@example.org"}
	full := Errorf(552, [3]int{5, 2, 2}, "mailbox full")
	for _, tc := range []struct {
		name       string
		rcpts      []Recipient
		localErr   error
		remoteErr  error
		staging    bool
		from       string
		wantErr    string // "", "temp", "5xx"
		wantCommit []string
		wantBounce int
	}{
		{name: "local only", rcpts: []Recipient{local}},
		{name: "remote only", rcpts: []Recipient{remote}},
		{name: "mixed, staged then committed", rcpts: []Recipient{local, remote}, staging: true, wantCommit: []string{"commit", "abort"}},
		{name: "mixed, queue fails: no local copy", rcpts: []Recipient{local, remote}, staging: true, remoteErr: errors.New("disk"), wantErr: "temp", wantCommit: []string{"abort"}},
		{name: "local refused for good, alone", rcpts: []Recipient{local}, localErr: full, wantErr: "5xx"},
		{name: "local refused for good, remote goes on", rcpts: []Recipient{local, remote}, localErr: full, from: "s@example.org", wantBounce: 1},
		{name: "local refused, null sender: no bounce", rcpts: []Recipient{local, remote}, localErr: full, wantBounce: 0},
		{name: "local temporary failure", rcpts: []Recipient{local}, localErr: errors.New("io"), wantErr: "temp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var commits []string
			lt := &target{name: "local", err: tc.localErr, commits: &commits}
			ot := &bouncingTarget{target: &target{name: "out", err: tc.remoteErr}}
			r := &router{local: lt, outbound: ot}
			if tc.staging {
				r.local = stagingTarget{lt}
			}
			env := &Envelope{ID: "X", From: tc.from, Recipients: tc.rcpts}
			err := r.deliver(context.Background(), env, NewMessage([]byte("x\r\n")), zap.NewNop())
			var e *Error
			switch {
			case tc.wantErr == "" && err != nil, tc.wantErr != "" && err == nil:
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			case tc.wantErr == "5xx" && !(errors.As(err, &e) && e.Code/100 == 5 && err == error(e)):
				t.Fatalf("want a bare 5xx, got %v", err)
			case tc.wantErr == "temp" && errors.As(err, &e) && err == error(e) && e.Code/100 == 5:
				t.Fatalf("want a temporary error, got %v", err)
			}
			if len(commits) != len(tc.wantCommit) || len(commits) > 0 && commits[0] != tc.wantCommit[0] {
				t.Fatalf("commits %v, want %v", commits, tc.wantCommit)
			}
			if len(ot.bounced) != tc.wantBounce {
				t.Fatalf("bounced %d, want %d", len(ot.bounced), tc.wantBounce)
			}
		})
	}
}
