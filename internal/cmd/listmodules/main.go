// Command listmodules prints the IDs of every module caddy-smtp registers
// (smtp app, smtp.* namespaces, admin routes), for CI to check a build.
package main

import (
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"

	_ "github.com/caddy-smtp/caddy-smtp"
)

func main() {
	for _, id := range caddy.Modules() {
		if id == "smtp" || strings.HasPrefix(id, "smtp.") || strings.HasPrefix(id, "admin.api.smtp") {
			fmt.Println(id)
		}
	}
}
