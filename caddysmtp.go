// Package caddysmtp pulls in the smtp app and every module of caddy-smtp, so
// that `xcaddy build --with github.com/caddy-smtp/caddy-smtp` gets them all.
package caddysmtp

import (
	_ "github.com/caddy-smtp/caddy-smtp/caddyfile"
	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/dovecot"
	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/file"
	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	_ "github.com/caddy-smtp/caddy-smtp/modules/autoconfig"
	_ "github.com/caddy-smtp/caddy-smtp/modules/ban"
	_ "github.com/caddy-smtp/caddy-smtp/modules/dmarc"
	_ "github.com/caddy-smtp/caddy-smtp/modules/dnsrecords"
	_ "github.com/caddy-smtp/caddy-smtp/modules/helo"
	_ "github.com/caddy-smtp/caddy-smtp/modules/lmtp"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"
	_ "github.com/caddy-smtp/caddy-smtp/modules/milter"
	_ "github.com/caddy-smtp/caddy-smtp/modules/mtastspolicy"
	_ "github.com/caddy-smtp/caddy-smtp/modules/queue"
	_ "github.com/caddy-smtp/caddy-smtp/modules/ratelimit"
	_ "github.com/caddy-smtp/caddy-smtp/modules/rbl"
	_ "github.com/caddy-smtp/caddy-smtp/modules/rspamd"
	_ "github.com/caddy-smtp/caddy-smtp/modules/spf"
	_ "github.com/caddy-smtp/caddy-smtp/modules/tarpit"
	_ "github.com/caddy-smtp/caddy-smtp/smtpapp"
)
