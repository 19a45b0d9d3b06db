// Command testcaddy is Caddy with caddy-smtp and the queue module, built by
// the queue's kill -9 test (cmd/caddy does not include the queue until
// caddysmtp.go imports it).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-smtp/caddy-smtp"
	_ "github.com/caddy-smtp/caddy-smtp/modules/queue"
)

func main() {
	caddycmd.Main()
}
