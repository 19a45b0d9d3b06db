package file

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"

	"github.com/caddy-smtp/caddy-smtp/modules/auth/authtable"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-user",
		Usage: "--file <users file> --user <address> [--alias <address>...] [--plaintext <password>]",
		Short: "Adds or changes a mail account in a users file (smtp.auth.file)",
		Long: `
Adds an account to a users file of the smtp.auth.file module, or changes
its password (and aliases, if --alias is given). The password is asked for
twice on the terminal, like 'caddy hash-password', unless --plaintext is
given or it is piped on standard input. The file is replaced atomically;
other lines, comments included, are kept. A running server picks the
change up without a reload.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("file", "f", "", "The users file (created if missing)")
			cmd.Flags().StringP("user", "u", "", "The account's address")
			cmd.Flags().StringSliceP("alias", "a", nil, "An alias of the account (repeatable)")
			cmd.Flags().StringP("plaintext", "p", "", "The password (prompted for if not given)")
			cmd.Flags().IntP("cost", "c", bcrypt.DefaultCost, "The bcrypt cost")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdUser)
		},
	})
}

func cmdUser(fl caddycmd.Flags) (int, error) {
	path, user := fl.String("file"), strings.TrimSpace(fl.String("user"))
	if path == "" || user == "" {
		return caddy1(fmt.Errorf("--file and --user are required"))
	}
	aliases, _ := fl.GetStringSlice("alias")
	pass := fl.String("plaintext")
	if pass == "" {
		var err error
		if pass, err = readPassword(); err != nil {
			return caddy1(err)
		}
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), fl.Int("cost"))
	if err != nil {
		return caddy1(err)
	}
	acct := authtable.Account{Address: user, Password: string(hash), Aliases: aliases}
	if _, err := authtable.New([]authtable.Account{acct}, "account"); err != nil {
		return caddy1(err)
	}
	if err := SetUser(path, acct, fl.Changed("alias")); err != nil {
		return caddy1(err)
	}
	fmt.Fprintf(os.Stderr, "%s saved in %s\n", user, path)
	return 0, nil
}

func caddy1(err error) (int, error) { return 1, err }

func readPassword() (string, error) {
	if !term.IsTerminal(int(os.Stdin.Fd())) {
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && line == "" {
			return "", fmt.Errorf("reading the password from standard input: %v", err)
		}
		return strings.TrimRight(line, "\r\n"), nil
	}
	fmt.Fprint(os.Stderr, "Password: ")
	p1, err := term.ReadPassword(int(os.Stdin.Fd()))
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return "", err
	}
	fmt.Fprint(os.Stderr, "Confirm password: ")
	p2, err := term.ReadPassword(int(os.Stdin.Fd()))
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return "", err
	}
	if string(p1) != string(p2) {
		return "", fmt.Errorf("passwords do not match")
	}
	if len(p1) == 0 {
		return "", fmt.Errorf("empty password")
	}
	return string(p1), nil
}

// SetUser adds or replaces acct's line in the users file at path, keeping
// every other line; the aliases of an existing line are kept unless
// setAliases. The file is written to a temporary file, synced and renamed.
func SetUser(path string, acct authtable.Account, setAliases bool) error {
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	var lines []string
	if len(data) > 0 {
		lines = strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	}
	found := false
	for i, l := range lines {
		old, err := ParseLine(strings.TrimSpace(l))
		if err != nil || !strings.EqualFold(old.Address, acct.Address) {
			continue
		}
		if !setAliases {
			acct.Aliases = old.Aliases
		}
		lines[i] = FormatLine(acct)
		found = true
		break
	}
	if !found {
		lines = append(lines, FormatLine(acct))
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".users-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(strings.Join(lines, "\n") + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
