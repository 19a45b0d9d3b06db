package smtpapp

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
)

// router hands an accepted message to the delivery targets: the local
// recipients to local delivery, the remote ones to the outbound target.
// It is the one place with delivery policy; the session makes one call
// and turns the result into the reply (as chasquid hands a message to its
// queue, or maddy's msgpipeline to its targets).
type router struct {
	local    DeliveryTarget
	outbound DeliveryTarget // nil: nothing is relayed
	// srsSecret gives the SRS secret for forwarded copies; isLocal
	// tells a local domain (whose senders are not rewritten).
	srsSecret func(context.Context) ([]byte, error)
	isLocal   func(string) bool
}

// deliver returns nil once every recipient is taken care of: stored,
// queued, or refused for good and bounced. A bare 5xx *Error means every
// recipient was refused for good; any other error is temporary, and then
// no copy is visible anywhere.
//
// With a Stager as local target and remote recipients too, the local
// copies are staged, the outbound target takes the message, and only
// then do the local copies become visible: a failure of the outbound
// target leaves no local copy to be delivered twice when the client
// retries.
func (r *router) deliver(ctx context.Context, env *Envelope, msg *Message, log *zap.Logger) error {
	ctx = context.WithoutCancel(ctx) // a message being stored is finished
	local, remote := splitRecipients(env.Recipients)
	commit := func() error { return nil }
	if len(local) > 0 {
		e := *env
		e.Recipients = local
		var err error
		if stager, ok := r.local.(Stager); ok && len(remote) > 0 {
			var abort func()
			if commit, abort, err = stager.Stage(ctx, &e, msg); err != nil {
				return fmt.Errorf("local delivery: %w", err)
			}
			defer abort()
		} else if err = r.deliverLocal(ctx, &e, msg, len(remote) > 0, log); err != nil {
			return err
		}
	}
	if len(remote) > 0 {
		batches, err := r.outboundBatches(ctx, env, msg, remote)
		if err != nil {
			return fmt.Errorf("outbound: %w", err)
		}
		for _, b := range batches {
			if err := r.outbound.Deliver(ctx, b.env, b.msg); err != nil {
				return fmt.Errorf("outbound: %w", err)
			}
		}
	}
	if err := commit(); err != nil {
		return fmt.Errorf("local delivery: %w", err)
	}
	return nil
}

func splitRecipients(all []Recipient) (local, remote []Recipient) {
	for _, r := range all {
		if r.Local() {
			local = append(local, r)
		} else {
			remote = append(remote, r)
		}
	}
	return local, remote
}

// deliverLocal stores the local copies. Recipients the target refused
// for good get a bounce while the others keep their copy.
func (r *router) deliverLocal(ctx context.Context, env *Envelope, msg *Message, remotesToo bool, log *zap.Logger) error {
	err := r.local.Deliver(ctx, env, msg)
	if err == nil {
		return nil
	}
	// Every local recipient refused for good, but remote ones remain:
	// those still get the message, the local ones a bounce.
	if refused, ok := err.(*Error); ok && refused.Code/100 == 5 && remotesToo {
		failed := make([]FailedRecipient, len(env.Recipients))
		for i, rc := range env.Recipients {
			failed[i] = FailedRecipient{Recipient: rc, Reply: refused}
		}
		err = &PartialFailure{Failed: failed}
	}
	if err := r.bounceFailed(ctx, env, msg, err, log); err != nil {
		if refused, ok := err.(*Error); ok && refused.Code/100 == 5 {
			return refused // every recipient refused for good
		}
		return fmt.Errorf("local delivery: %w", err)
	}
	return nil
}

// bounceFailed handles a local delivery that failed for some recipients
// only: their sender gets a bounce (nobody, for the null sender) and the
// message counts as accepted. Any other error is returned as it is.
func (r *router) bounceFailed(ctx context.Context, env *Envelope, msg *Message, err error, log *zap.Logger) error {
	var pf *PartialFailure
	if !errors.As(err, &pf) {
		return err
	}
	for _, f := range pf.Failed {
		log.Info("recipient refused by the mailbox", zap.String("id", env.ID), zap.String("to", f.Address), zap.String("reply", f.Reply.Error()))
	}
	if env.From == "" {
		return nil // never a bounce for a bounce
	}
	b, ok := r.outbound.(Bouncer)
	if !ok {
		// The others have their copy: a 451 would make the client send it
		// again and again. Accept, and say loudly who did not get it.
		log.Error("no outbound queue to bounce through: the sender is not told about the refused recipients",
			zap.String("id", env.ID), zap.String("from", env.From))
		return nil
	}
	return b.Bounce(ctx, env, msg, pf.Failed)
}
