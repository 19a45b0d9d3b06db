// Package maildir is the smtp.delivery.maildir module: it stores mail in
// Maildirs laid out <root>/<domain>/<local part>/{tmp,new,cur}, the layout
// Dovecot reads (junk in the Maildir++ folder .Junk).
package maildir

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/promreg"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Maildir{})
}

// Maildir delivers to local Maildirs. A message is written to tmp/ (an
// unnamed file there where the system has them), synced, linked or renamed
// into new/ and the folder synced, before delivery reports success.
type Maildir struct {
	// Root is the folder that holds one folder per domain. Required.
	// Placeholders like {env.HOME} are replaced.
	Root string `json:"root,omitempty"`

	// JunkFolder is the Maildir++ folder for messages tagged as spam.
	// Default: Junk.
	JunkFolder string `json:"junk_folder,omitempty"`

	// Sync is how the copies of a message reach the disk before delivery
	// succeeds (and the client gets its 250). Whichever way, a copy is
	// synced while still invisible (an unnamed file, or in tmp/), then
	// linked into new/, and new/ is synced.
	//
	// "files" syncs each copy on its own (fsync), as Postfix does with its
	// queue files: a delivery waits only for its own files.
	//
	// "file_system" lets concurrent deliveries share one sync of the whole
	// file system (syncfs; Linux 5.8 or later): N messages arriving
	// together cost one sync instead of N. Such a sync also writes out
	// whatever other programs left unwritten on that file system, so a busy
	// neighbour makes deliveries wait: for a file system that holds mail
	// only.
	//
	// "auto" is file_system while the system has little unwritten data (at
	// most 16 MiB of Dirty and Writeback in /proc/meminfo, looked at every
	// 100 ms at most), files otherwise: the shared sync when it is cheap,
	// and one sync per copy while a neighbour has much to write.
	//
	// Default: auto on Linux 5.8 or later, files elsewhere. Copies that
	// cannot be unnamed files (no O_TMPFILE) are always synced one by one.
	// The queue has the same setting for its spool.
	Sync string `json:"sync,omitempty"`

	root     string
	hostname string
	unnamed  bool // O_TMPFILE files can be linked (needs /proc)
	sync     groupsync.Mode
	logger   *zap.Logger
}

var seq atomic.Uint64

// pid is in every file name; os.Getpid is a system call each time.
var pid = strconv.Itoa(os.Getpid())

// writers buffer a copy so that it reaches the file in one write (the
// headers added here, the received header fields and the body are three
// pieces otherwise).
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}

var errNoUnnamed = errors.New("unnamed files are not supported here")

// CaddyModule returns the Caddy module information.
func (Maildir) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.delivery.maildir", New: func() caddy.Module { return new(Maildir) }}
}

// Provision checks the config and creates the root.
func (m *Maildir) Provision(ctx caddy.Context) error {
	m.logger = ctx.Logger()
	if err := promreg.Register(ctx.GetMetricsRegistry(), groupsync.Collectors()...); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	if m.Root == "" {
		return fmt.Errorf("root: the Maildir root folder is required")
	}
	m.root = filepath.Clean(caddy.NewReplacer().ReplaceKnown(m.Root, ""))
	if err := os.MkdirAll(m.root, 0o700); err != nil {
		return fmt.Errorf("root: %v", err)
	}
	// The root's own entry, if just made, must not vanish in a crash
	// under the first messages (ensureMaildir syncs from the root down).
	if err := groupsync.Dir(filepath.Dir(m.root)); err != nil {
		m.logger.Warn("cannot sync the folder above the Maildir root", zap.String("root", m.root), zap.Error(err))
	}
	if m.JunkFolder == "" {
		m.JunkFolder = "Junk"
	}
	if strings.ContainsAny(m.JunkFolder, "/\\") || strings.HasPrefix(m.JunkFolder, ".") {
		return fmt.Errorf("junk_folder: %q must be a plain folder name", m.JunkFolder)
	}
	mode, err := groupsync.ParseMode(m.Sync)
	if err != nil {
		return fmt.Errorf("sync: %v", err)
	}
	m.sync, m.Sync = mode, mode.String()
	_, err = os.Stat("/proc/self/fd")
	m.unnamed = err == nil
	h, _ := os.Hostname()
	m.hostname = strings.NewReplacer("/", `\057`, ":", `\072`).Replace(h)
	return nil
}

// Path returns the Maildir of a mailbox (canonical address, see
// smtpapp.CanonicalAddress), and whether the address makes a safe path.
//
// Folder names: the domain in its A-label form (an IDN given in U-labels
// lands in the same folder), the local part lower-cased and kept as it is,
// UTF-8 included (no encoding: Dovecot reads UTF-8 folder names, and the
// local part comes NFC-normalized). Whatever the name, it stays one safe
// path element: never empty, never starting with "." (so no "." or ".."
// and no Maildir++ subfolder), no "/" or "\", valid UTF-8 only, and no
// control, format (bidi overrides, zero-width), private-use, unassigned or
// space characters beyond ASCII; at most 255 bytes.
func (m *Maildir) Path(mailbox string, junk bool) (string, error) {
	at := strings.LastIndexByte(mailbox, '@')
	if at <= 0 {
		return "", fmt.Errorf("mailbox %q has no domain", mailbox)
	}
	if !utf8.ValidString(mailbox) { // before ToLower, which would mend it
		return "", fmt.Errorf("mailbox %q is not valid UTF-8", mailbox)
	}
	local := strings.ToLower(mailbox[:at])
	domain, ok := smtpapp.CanonicalDomain(mailbox[at+1:])
	if !ok || !safeName(local) || !safeName(domain) {
		return "", fmt.Errorf("mailbox %q does not make a safe folder name", mailbox)
	}
	p := filepath.Join(m.root, domain, local)
	if junk {
		p = filepath.Join(p, "."+m.JunkFolder)
	}
	return p, nil
}

// safeName reports whether s is safe as one folder name (see Path).
func safeName(s string) bool {
	if s == "" || s[0] == '.' || len(s) > 255 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		switch {
		case r == '/' || r == '\\' || r < 0x20 || r == 0x7f:
			return false
		case r >= 0x80 && (!unicode.IsGraphic(r) || unicode.IsSpace(r)):
			return false
		}
	}
	return true
}

// Deliver stores msg once per distinct mailbox among the recipients: every
// copy is written and synced first, then all are made visible in new/.
func (m *Maildir) Deliver(ctx context.Context, env *smtpapp.Envelope, msg *smtpapp.Message) error {
	commit, _, err := m.Stage(ctx, env, msg)
	if err != nil {
		return err
	}
	return commit()
}

// Stage writes and syncs every copy, not yet visible; commit links them
// into new/ and syncs the folders, abort drops them.
func (m *Maildir) Stage(ctx context.Context, env *smtpapp.Envelope, msg *smtpapp.Message) (commit func() error, abort func(), err error) {
	var staged []*stagedFile
	abort = func() {
		for _, sf := range staged {
			sf.abort()
		}
	}
	seen := map[string]bool{}
	for _, r := range env.Recipients {
		if !r.Local() || seen[r.Mailbox] {
			continue
		}
		seen[r.Mailbox] = true
		dir, err := m.Path(r.Mailbox, env.Junk)
		if err != nil {
			abort()
			return nil, nil, err
		}
		sf, err := m.stage(dir, env, r, msg)
		if err != nil {
			abort()
			return nil, nil, err
		}
		staged = append(staged, sf)
	}
	if err := m.syncStaged(staged); err != nil {
		abort()
		return nil, nil, err
	}
	commit = func() error {
		defer abort() // closes what is left
		for i, sf := range staged {
			if err := sf.commit(); err != nil {
				for _, done := range staged[:i] {
					os.Remove(done.dst)
				}
				return err
			}
		}
		for _, sf := range staged {
			if err := syncFolder(filepath.Dir(sf.dst)); err != nil {
				return err
			}
		}
		return nil
	}
	return commit, abort, nil
}

// syncStaged syncs the unnamed copies stage wrote, each before it can
// become visible (groupsync.WrittenAll: in sync file_system or auto, one
// shared sync of each file system covers the copies on it, and concurrent
// deliveries share it too).
func (m *Maildir) syncStaged(staged []*stagedFile) error {
	var files []*os.File
	var dirs []string
	for _, sf := range staged {
		if sf.unsynced {
			files = append(files, sf.f)
			dirs = append(dirs, filepath.Dir(filepath.Dir(sf.dst)))
		}
	}
	if len(files) == 0 {
		return nil
	}
	if err := groupsync.WrittenAll(files, dirs, m.sync); err != nil {
		return err
	}
	for _, sf := range staged {
		sf.unsynced = false
	}
	return nil
}

// stagedFile is a copy not yet visible in new/: an unnamed file
// (O_TMPFILE, linked into new/ on commit) or, where the file system lacks
// those, a file in tmp/ (renamed on commit). It is synced, unless unsynced
// (syncStaged's job).
type stagedFile struct {
	f        *os.File // unnamed file, or nil
	tmp      string   // named file in tmp/, or ""
	dst      string
	unsynced bool
}

func (sf *stagedFile) commit() error {
	var err error
	if sf.f != nil {
		err = linkUnnamed(sf.f, sf.dst)
		sf.f.Close()
		sf.f = nil
	} else {
		err = os.Rename(sf.tmp, sf.dst)
		sf.tmp = ""
	}
	if linkHook != nil && err == nil {
		linkHook(sf.dst)
	}
	return err
}

// linkHook, in tests only, sees each message become visible in new/.
var linkHook func(path string)

func (sf *stagedFile) abort() {
	if sf.f != nil {
		sf.f.Close() // an unnamed file vanishes with its last descriptor
	}
	if sf.tmp != "" {
		os.Remove(sf.tmp)
	}
}

func (m *Maildir) stage(dir string, env *smtpapp.Envelope, r smtpapp.Recipient, msg *smtpapp.Message) (*stagedFile, error) {
	now := time.Now()
	base := strconv.FormatInt(now.Unix(), 10) + ".M" + strconv.Itoa(now.Nanosecond()/1000) +
		"P" + pid + "Q" + strconv.FormatUint(seq.Add(1), 10) + "." + m.hostname
	sf := &stagedFile{}
	open := func() (*os.File, error) {
		if !m.unnamed {
			return nil, errNoUnnamed
		}
		return openUnnamed(filepath.Join(dir, "tmp"), base)
	}
	openNamed := func() (*os.File, error) { // no O_TMPFILE: the classic tmp/ file
		sf.tmp = filepath.Join(dir, "tmp", base)
		return os.OpenFile(sf.tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	}
	f, err := open()
	if err != nil && !os.IsNotExist(err) {
		f, err = openNamed()
	}
	if os.IsNotExist(err) { // first message: create the Maildir
		if err := m.ensureMaildir(dir); err != nil {
			return nil, err
		}
		if f, err = open(); err != nil {
			f, err = openNamed()
		}
	}
	if err != nil {
		return nil, err
	}
	if sf.tmp == "" {
		sf.f = f
	}
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(f)
	n, err := bw.WriteString("Return-Path: <" + env.From + ">\r\nDelivered-To: " + r.Address + "\r\n")
	if err == nil {
		var k int64
		k, err = msg.WriteTo(bw)
		n += int(k)
	}
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writers.Put(bw)
	if err == nil {
		if sf.f != nil {
			sf.unsynced = true // syncStaged syncs it
		} else {
			err = f.Sync() // a named copy, closed below
		}
	}
	if sf.tmp != "" {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		sf.abort()
		return nil, err
	}
	// Dovecot reads the size from S= and skips a stat.
	sf.dst = filepath.Join(dir, "new", base+",S="+strconv.Itoa(n))
	if writeHook != nil {
		writeHook(sf.dst)
	}
	return sf, nil
}

// ensureMaildir creates the Maildir (and the Maildir++ marker for a
// subfolder) if missing, so that the first message survives a crash too:
// new/ and cur/ first, then a sync of the mailbox folder and of every
// folder above it up to the root, and tmp/ last. A concurrent delivery
// that finds tmp/ (and so skips this) then links into a new/ that is
// already durable; one that does not comes here and syncs the same
// folders before it answers.
func (m *Maildir) ensureMaildir(dir string) error {
	for _, sub := range []string{"new", "cur"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return err
		}
	}
	if strings.HasPrefix(filepath.Base(dir), ".") {
		f, err := os.OpenFile(filepath.Join(dir, "maildirfolder"), os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		f.Close()
	}
	for p := dir; ; p = filepath.Dir(p) {
		if err := groupsync.Dir(p); err != nil {
			return err
		}
		if p == m.root || p == filepath.Dir(p) {
			break
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	return nil
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	maildir <root> {
//		junk_folder <name>
//		sync files|file_system|auto
//	}
func (m *Maildir) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := caddyargs.Header(d, &m.Root); err != nil {
		return err
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "root":
			if !d.Args(&m.Root) {
				return d.ArgErr()
			}
		case "junk_folder":
			if !d.Args(&m.JunkFolder) {
				return d.ArgErr()
			}
		case "sync":
			if !d.Args(&m.Sync) {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized maildir option %q", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner      = (*Maildir)(nil)
	_ caddyfile.Unmarshaler  = (*Maildir)(nil)
	_ smtpapp.DeliveryTarget = (*Maildir)(nil)
)
