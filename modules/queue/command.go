package queue

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-queue",
		Usage: "[list | show <id> | flush [<id>] | delete <id>] [--config <path> [--adapter <name>]] [--address <interface>] [--json]",
		Short: "Shows and manages the outbound mail queue of the running instance",
		Long: `
Talks to the admin API of the running Caddy instance (the smtp_queue admin
module) to list the outbound mail queue, show one entry, retry entries now
(flush), or delete one without a bounce.

The admin address is taken from --address, else from the config file given
with --config, else the default (localhost:2019).
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("config", "c", "", "Configuration file, to find the admin address")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().String("address", "", "Address of the administration listener, if different from config")
			cmd.Flags().Bool("json", false, "Print the API's JSON")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdQueue)
		},
	})
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-dkim",
		Usage: "[--config <path> [--adapter <name>]] [--address <interface>]",
		Short: "Prints the DKIM DNS records to publish for the local domains",
		Long: `
Asks the running Caddy instance for the DKIM keys of the outbound queue (per
local domain an RSA key and an Ed25519 key, as configured, generated on
first start and kept in Caddy's storage) and prints the TXT records to
publish, in zone-file syntax.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("config", "c", "", "Configuration file, to find the admin address")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().String("address", "", "Address of the administration listener, if different from config")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdDKIM)
		},
	})
}

func adminRequest(fl caddycmd.Flags, method, uri string) ([]byte, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return nil, fmt.Errorf("finding the admin address: %v", err)
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 256<<20))
}

func cmdQueue(fl caddycmd.Flags) (int, error) {
	args := fl.Args()
	op := "list"
	if len(args) > 0 {
		op = args[0]
	}
	var method, uri string
	switch {
	case op == "list" && len(args) <= 1:
		method, uri = http.MethodGet, "/smtp/queue"
	case op == "show" && len(args) == 2:
		method, uri = http.MethodGet, "/smtp/queue/"+url.PathEscape(args[1])
	case op == "flush" && len(args) == 1:
		method, uri = http.MethodPost, "/smtp/queue/flush"
	case op == "flush" && len(args) == 2:
		method, uri = http.MethodPost, "/smtp/queue/"+url.PathEscape(args[1])+"/flush"
	case op == "delete" && len(args) == 2:
		method, uri = http.MethodDelete, "/smtp/queue/"+url.PathEscape(args[1])
	default:
		return caddy1, fmt.Errorf("usage: caddy smtp-queue [list | show <id> | flush [<id>] | delete <id>]")
	}
	body, err := adminRequest(fl, method, uri)
	if err != nil {
		return caddy1, err
	}
	if op != "list" || fl.Bool("json") {
		os.Stdout.Write(body)
		return 0, nil
	}
	var entries []EntryInfo
	if err := json.Unmarshal(body, &entries); err != nil {
		return caddy1, fmt.Errorf("decoding the answer: %v", err)
	}
	if len(entries) == 0 {
		fmt.Println("The queue is empty.")
		return 0, nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tQUEUED\tSIZE\tSENDER\tRECIPIENTS\tATTEMPTS\tNEXT TRY\tLAST ERROR")
	for _, e := range entries {
		var pending []string
		for _, r := range e.Recipients {
			if r.Status == "pending" {
				pending = append(pending, r.Address)
			}
		}
		next := "-"
		if e.InFlight {
			next = "now (in flight)"
		} else if e.NextTry != nil {
			next = e.NextTry.Local().Format(time.DateTime)
		}
		sender := e.Sender
		if sender == "" {
			sender = "<>"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Queued.Local().Format(time.DateTime), e.Size,
			sender, strings.Join(pending, ","), e.Attempts, next, oneLine(e.LastError, 80))
	}
	tw.Flush()
	fmt.Printf("%d message(s)\n", len(entries))
	return 0, nil
}

func cmdDKIM(fl caddycmd.Flags) (int, error) {
	body, err := adminRequest(fl, http.MethodGet, "/smtp/dkim")
	if err != nil {
		return caddy1, err
	}
	var recs []DKIMRecord
	if err := json.Unmarshal(body, &recs); err != nil {
		return caddy1, fmt.Errorf("decoding the answer: %v", err)
	}
	if len(recs) == 0 {
		fmt.Println("; no DKIM keys (no outbound queue, or signing is disabled)")
		return 0, nil
	}
	for _, r := range recs {
		alg := r.Algorithm
		if alg == "" {
			alg = "key"
		}
		fmt.Printf("; %s (selector %s, %s)\n%s\n", r.Domain, r.Selector, alg, r.Zone)
	}
	return 0, nil
}

// caddy1 is the exit status of a failed command.
const caddy1 = 1
