package smtpapp

import (
	"errors"
	"strings"
)

// Errors that accounts providers return.
var (
	ErrAuthFailed = errors.New("authentication failed")
	ErrNoSuchUser = errors.New("no such user")
)

func lowerASCII(s string) string { return strings.ToLower(s) }

// Standard replies.
var (
	replyAuthFailed        = Errorf(535, [3]int{5, 7, 8}, "Authentication credentials invalid")
	replyAuthRequired      = Errorf(530, [3]int{5, 7, 0}, "Authentication required")
	replyNoSuchUser        = Errorf(550, [3]int{5, 1, 1}, "Recipient address rejected: no such mailbox here")
	replyRelayDenied       = Errorf(554, [3]int{5, 7, 1}, "Relay access denied")
	replySenderNotOwned    = Errorf(553, [3]int{5, 7, 1}, "Sender address not owned by the authenticated user")
	replyNullSender        = Errorf(553, [3]int{5, 7, 1}, "The null sender is not allowed for authenticated users")
	replyTempLookup        = Errorf(451, [3]int{4, 3, 0}, "Temporary failure looking up the recipient, try again later")
	replyDeliveryFailed    = Errorf(451, [3]int{4, 3, 0}, "Temporary local problem storing the message, try again later")
	replyBareLineEnd       = Errorf(550, [3]int{5, 6, 0}, "Bare CR or LF in message; lines must end with CRLF")
	replyBareLFCommand     = Errorf(500, [3]int{5, 5, 2}, "Bare CR or LF received; SMTP commands must end with CRLF")
	replyTooManyErrors     = Errorf(421, [3]int{4, 7, 0}, "Too many errors, closing connection")
	replyTooManyAuth       = Errorf(421, [3]int{4, 7, 0}, "Too many failed authentications, closing connection")
	replyClosing           = Errorf(421, [3]int{4, 3, 2}, "Service shutting down, closing connection")
	replySpam              = Errorf(550, [3]int{5, 7, 1}, "Message refused as spam")
	replyTooManyHops       = Errorf(554, [3]int{5, 4, 6}, "Too many hops (Received header fields): mail loop")
	replyAuthInTransaction = Errorf(503, [3]int{5, 5, 1}, "AUTH is not allowed during a mail transaction")
	replyHeaderTooLarge    = Errorf(552, [3]int{5, 3, 4}, "Message header section too large")
	replyNestedMail        = Errorf(503, [3]int{5, 5, 1}, "Nested MAIL command")
	replyAuthzid           = Errorf(535, [3]int{5, 7, 8}, "Authorization identity must match the login")
)
