// Package file is the smtp.auth.file module: accounts in a file, one
// `address:bcrypt-hash[:alias,alias...]` per line, re-read when the file
// changes, without a config reload.
package file

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/auth/authtable"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(File{})
}

// File is an accounts provider backed by a users file:
//
//	# comment
//	alice@example.test:$2a$10$...:postmaster@example.test,abuse@example.test
//	bob@example.test:$2a$10$...
//	shared@example.test:            (no password: receives mail, cannot log in)
//	info@example.test:>bob@example.test,someone@example.org
//
// A line whose second field starts with ">" is a forwarding address, not
// an account: its mail goes to the listed addresses, on local or other
// domains (remote copies through the outbound queue with an SRS sender).
//
// The file is checked for changes at most every check_interval; a line that
// cannot be parsed is logged with its line number and skipped, and a file
// that cannot be read keeps the accounts last loaded.
type File struct {
	// Path of the users file. Required.
	Path string `json:"path,omitempty"`

	// CheckInterval is how often, at most, the file is checked for
	// changes (on use). Default: 1s.
	CheckInterval caddy.Duration `json:"check_interval,omitempty"`

	logger   *zap.Logger
	mu       *sync.Mutex
	table    *authtable.Table
	checked  time.Time
	modTime  time.Time
	size     int64
	interval time.Duration
}

// CaddyModule returns the Caddy module information.
func (File) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.auth.file", New: func() caddy.Module { return new(File) }}
}

// Provision loads the file once; it must exist.
func (f *File) Provision(ctx caddy.Context) error {
	f.logger = ctx.Logger()
	f.mu = new(sync.Mutex)
	if f.Path == "" {
		return fmt.Errorf("path: the users file is required")
	}
	f.Path = caddy.NewReplacer().ReplaceKnown(f.Path, "")
	f.interval = time.Second
	if f.CheckInterval > 0 {
		f.interval = time.Duration(f.CheckInterval)
	}
	if _, err := os.Stat(f.Path); err != nil {
		return fmt.Errorf("path: %v", err)
	}
	f.reload(true)
	return nil
}

// current returns the table, re-reading the file if it changed.
func (f *File) current() *authtable.Table {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.checked) >= f.interval {
		f.reload(false)
	}
	return f.table
}

// reload re-reads the file if its size or time changed; the caller holds
// f.mu (or is Provision).
func (f *File) reload(force bool) {
	f.checked = time.Now()
	st, err := os.Stat(f.Path)
	if err != nil {
		f.logger.Error("users file unreadable; keeping the accounts loaded before", zap.String("path", f.Path), zap.Error(err))
		if f.table == nil {
			f.table, _ = authtable.New(nil, "")
		}
		return
	}
	if !force && st.ModTime().Equal(f.modTime) && st.Size() == f.size {
		return
	}
	accounts, forwards, err := ParseUsersFile(f.Path, func(line int, msg string) {
		f.logger.Warn("users file: line skipped", zap.String("path", f.Path), zap.Int("line", line), zap.String("reason", msg))
	})
	if err != nil {
		f.logger.Error("users file unreadable; keeping the accounts loaded before", zap.String("path", f.Path), zap.Error(err))
		if f.table == nil {
			f.table, _ = authtable.New(nil, "")
		}
		return
	}
	table, err := authtable.New(accounts, "accounts")
	if err == nil {
		err = table.AddForwards(forwards, "forwards")
	}
	if err != nil { // ParseUsersFile already dropped bad lines; this is a bug
		f.logger.Error("users file rejected", zap.Error(err))
		return
	}
	if table.Len() == 0 && f.table != nil && f.table.Len() > 0 {
		// Most likely caught half-written (edit files by replacing them,
		// as `caddy smtp-user` does): keep the accounts, look again later.
		f.logger.Warn("users file has no valid account now; keeping the accounts loaded before", zap.String("path", f.Path))
		return
	}
	f.table, f.modTime, f.size = table, st.ModTime(), st.Size()
	f.logger.Info("users file loaded", zap.String("path", f.Path), zap.Int("accounts", len(accounts)))
}

// ParseFile reads the accounts of a users file (forwarding lines are
// left out); bad lines are reported through skip and left out, and so
// are addresses defined twice (the first one wins).
func ParseFile(path string, skip func(line int, msg string)) ([]authtable.Account, error) {
	accounts, _, err := ParseUsersFile(path, skip)
	return accounts, err
}

// ParseUsersFile reads the accounts and forwarding addresses of a users
// file, as ParseFile.
func ParseUsersFile(path string, skip func(line int, msg string)) ([]authtable.Account, []authtable.Forward, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer fh.Close()
	var out []authtable.Account
	var forwards []authtable.Forward
	seen := map[string]bool{}
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if fw, ok, err := ParseForwardLine(line); ok {
			if err == nil {
				var t *authtable.Table
				if t, err = authtable.New(nil, "line"); err == nil {
					err = t.AddForwards([]authtable.Forward{fw}, "line")
				}
			}
			if err == nil && seen[strings.ToLower(fw.Address)] {
				err = fmt.Errorf("%s is already defined above", fw.Address)
			}
			if err != nil {
				skip(n, err.Error())
				continue
			}
			seen[strings.ToLower(fw.Address)] = true
			forwards = append(forwards, fw)
			continue
		}
		a, err := ParseLine(line)
		if err != nil {
			skip(n, err.Error())
			continue
		}
		// Check the line on its own and against those before it.
		if _, err := authtable.New([]authtable.Account{a}, "line"); err != nil {
			skip(n, err.Error())
			continue
		}
		dup := false
		for _, addr := range append([]string{a.Address}, a.Aliases...) {
			if seen[seenKey(addr)] {
				skip(n, fmt.Sprintf("%s is already defined above", addr))
				dup = true
				break
			}
		}
		if dup {
			continue
		}
		for _, addr := range append([]string{a.Address}, a.Aliases...) {
			seen[seenKey(addr)] = true
		}
		out = append(out, a)
	}
	return out, forwards, sc.Err()
}

// seenKey is addr as the table will key it (IDN forms and UTF-8 case
// folded), so that one address given twice in two forms is a duplicate.
func seenKey(addr string) string {
	if k, err := smtpapp.CanonicalAddress(strings.TrimSpace(addr)); err == nil {
		return k
	}
	return strings.ToLower(addr)
}

// ParseForwardLine parses `address:>target,target...`; ok is false for a
// line of another kind.
func ParseForwardLine(line string) (fw authtable.Forward, ok bool, err error) {
	addr, rest, found := strings.Cut(line, ":")
	rest = strings.TrimSpace(rest)
	if !found || !strings.HasPrefix(rest, ">") {
		return fw, false, nil
	}
	fw.Address = strings.TrimSpace(addr)
	for _, t := range strings.Split(rest[1:], ",") {
		if t = strings.TrimSpace(t); t != "" {
			fw.To = append(fw.To, t)
		}
	}
	if len(fw.To) == 0 {
		return fw, true, fmt.Errorf("want address:>target[,target...]")
	}
	return fw, true, nil
}

// ParseLine parses `address:hash[:alias,alias...]` (a forwarding line is
// an error).
func ParseLine(line string) (authtable.Account, error) {
	parts := strings.Split(line, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return authtable.Account{}, fmt.Errorf("want address:bcrypt-hash[:aliases]")
	}
	if strings.HasPrefix(strings.TrimSpace(parts[1]), ">") {
		return authtable.Account{}, fmt.Errorf("a forwarding line, not an account")
	}
	a := authtable.Account{Address: strings.TrimSpace(parts[0]), Password: strings.TrimSpace(parts[1])}
	if len(parts) == 3 {
		for _, al := range strings.Split(parts[2], ",") {
			if al = strings.TrimSpace(al); al != "" {
				a.Aliases = append(a.Aliases, al)
			}
		}
	}
	return a, nil
}

// FormatLine is the inverse of ParseLine.
func FormatLine(a authtable.Account) string {
	line := a.Address + ":" + a.Password
	if len(a.Aliases) > 0 {
		line += ":" + strings.Join(a.Aliases, ",")
	}
	return line
}

// Authenticate checks a login.
func (f *File) Authenticate(ctx context.Context, username, password string) (string, error) {
	return f.current().Authenticate(username, password)
}

// Lookup finds the account of an address.
func (f *File) Lookup(ctx context.Context, address string) (string, error) {
	return f.current().Lookup(address)
}

// Forwards returns the targets of a forwarding address.
func (f *File) Forwards(ctx context.Context, address string) ([]string, error) {
	return f.current().Forwards(address), nil
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	file <path> {
//		check_interval <duration>
//	}
func (f *File) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := caddyargs.Header(d, &f.Path); err != nil {
		return err
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "path":
			if !d.Args(&f.Path) {
				return d.ArgErr()
			}
		case "check_interval":
			var err error
			if f.CheckInterval, err = caddyargs.Duration(d); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized file accounts option %q", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*File)(nil)
	_ caddyfile.Unmarshaler = (*File)(nil)
	_ smtpapp.Accounts      = (*File)(nil)
	_ smtpapp.Forwarder     = (*File)(nil)
)
