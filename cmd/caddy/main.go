// Command caddy is Caddy with its standard modules and caddy-smtp, so that
// `go run ./cmd/caddy` works without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-smtp/caddy-smtp"
)

func main() {
	caddycmd.Main()
}
