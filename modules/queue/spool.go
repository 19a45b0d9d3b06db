package queue

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// The spool on disk:
//
//	<path>/lock            flock'd by the process that runs the queue
//	<path>/tmp/            files being written (never acknowledged; cleared at start)
//	<path>/queue/<id>      one message: a header line, then the message
//	<path>/queue/<id>.state  per-recipient progress (absent until the first retry)
//	<path>/corrupt/        entries that could not be read, moved aside
//
// A message file is "CSQ1 " + the envelope as one line of JSON + "\n", then
// the message exactly as it is sent (DKIM-Signature first, if signed). It is
// written in tmp/, synced (alone, or by a file system sync shared with the
// enqueues in progress: sync), renamed into queue/ and the folder synced before
// Deliver returns (a sync shared by the enqueues in progress, started after
// the rename: groupsync.go): its presence in queue/ is the commit. It never changes
// afterwards; what changes (attempts, results) goes to <id>.state, replaced
// atomically (write, sync, rename, sync folder).
const fileMagic = "CSQ1 "

// maxEnvelopeLine bounds the envelope line a loader reads.
const maxEnvelopeLine = 16 << 20

// record is the immutable envelope of a queued message.
type record struct {
	ID         string              `json:"id"`
	From       string              `json:"from"`
	Recipients []smtpapp.Recipient `json:"rcpts"`
	Received   time.Time           `json:"received"`
	Queued     time.Time           `json:"queued"`
	ClientIP   string              `json:"client_ip,omitempty"`
	Account    string              `json:"account,omitempty"`
	// DSN marks a delivery status notification: it is never bounced.
	DSN bool `json:"dsn,omitempty"`
	// DKIM is the d= of the signature added at enqueue, if any.
	DKIM string `json:"dkim,omitempty"`
	// RequireTLS: the message came with MAIL FROM ... REQUIRETLS (RFC
	// 8689); it is relayed only over TLS validated by DANE or MTA-STS, to
	// hosts that support REQUIRETLS, and never downgraded.
	RequireTLS bool `json:"require_tls,omitempty"`
	// UTF8: the message came with MAIL FROM ... SMTPUTF8 (RFC 6531); it is
	// relayed with SMTPUTF8 to hosts that offer it, and to others only
	// what does not need it (see downgradeUTF8).
	UTF8 bool `json:"utf8,omitempty"`
}

// Recipient status values.
const (
	statusPending   = ""
	statusDelivered = "delivered"
	statusFailed    = "failed"
)

// rcptState is the progress of one recipient.
type rcptState struct {
	Status    string    `json:"status,omitempty"`
	Attempts  int       `json:"attempts,omitempty"`
	NextTry   time.Time `json:"next_try,omitzero"`
	LastTry   time.Time `json:"last_try,omitzero"`
	Code      int       `json:"code,omitempty"`
	Enhanced  string    `json:"enhanced,omitempty"`
	Reply     string    `json:"reply,omitempty"`
	RemoteMTA string    `json:"remote_mta,omitempty"`
	Expired   bool      `json:"expired,omitempty"`
	// TLSPolicy is the transport security policy of the last attempt's MX
	// host, TLSFailure the TLS-RPT result type of its failure.
	TLSPolicy  string `json:"tls_policy,omitempty"`
	TLSFailure string `json:"tls_failure,omitempty"`
	// Notified is set once the failure's DSN is queued (or was not due).
	Notified bool `json:"notified,omitempty"`
}

// state is the mutable part of an entry, in the same recipient order as
// the record.
type state struct {
	Rcpts  []rcptState `json:"rcpts"`
	Warned bool        `json:"warned,omitempty"`
}

type spool struct {
	root, qdir, tmpdir, baddir string
	lock                       *os.File
	qsync                      *groupsync.Folder // group commit of queue/'s syncs
}

func openSpool(root string) (*spool, error) {
	sp := &spool{
		root:   root,
		qdir:   filepath.Join(root, "queue"),
		tmpdir: filepath.Join(root, "tmp"),
		baddir: filepath.Join(root, "corrupt"),
	}
	sp.qsync = groupsync.New(sp.qdir, callSyncHook)
	for _, d := range []string{sp.qdir, sp.tmpdir, sp.baddir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	return sp, nil
}

// lockSpool takes the spool's lock. Only the holder delivers, reads the
// spool and clears tmp/ (of names not in keep, being written by this
// process); anyone may add messages.
func (sp *spool) lockSpool(keep func(name string) bool) error {
	lock, err := lockFile(filepath.Join(sp.root, "lock"))
	if err != nil {
		return err
	}
	sp.lock = lock
	// Whatever else is in tmp/ was never acknowledged.
	if entries, err := os.ReadDir(sp.tmpdir); err == nil {
		for _, e := range entries {
			if !keep(e.Name()) {
				os.Remove(filepath.Join(sp.tmpdir, e.Name()))
			}
		}
	}
	return nil
}

func (sp *spool) close() {
	if sp.lock != nil {
		sp.lock.Close()
		sp.lock = nil
	}
}

func (sp *spool) path(id string) string { return filepath.Join(sp.qdir, id) }

// exists reports whether an entry file of that name is in the spool.
func (sp *spool) exists(id string) bool {
	_, err := os.Lstat(sp.path(id))
	return err == nil
}

func (sp *spool) statePath(id string) string { return filepath.Join(sp.qdir, id+".state") }

// write stores a new message: envelope line, prefix (a DKIM-Signature
// field), then what body writes, synced in tmp/ the way mode says. It
// returns the offset of the message in the file and the message's size.
func (sp *spool) write(rec *record, prefix []byte, body func(io.Writer) (int64, error), mode groupsync.Mode) (int64, int64, error) {
	line, err := json.Marshal(rec)
	if err != nil {
		return 0, 0, err
	}
	tmp := filepath.Join(sp.tmpdir, rec.ID)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, 0, err
	}
	bw := bufio.NewWriterSize(f, 64*1024)
	bw.WriteString(fileMagic)
	bw.Write(line)
	bw.WriteByte('\n')
	off := int64(len(fileMagic) + len(line) + 1)
	bw.Write(prefix)
	n, err := body(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && spoolWriteHook != nil {
		spoolWriteHook(sp.path(rec.ID))
	}
	if err == nil {
		err = groupsync.Written(f, sp.tmpdir, mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, sp.path(rec.ID))
		if err == nil && spoolRenameHook != nil {
			spoolRenameHook(sp.path(rec.ID))
		}
	}
	if err == nil {
		// Shared with the enqueues in progress (groupsync.go).
		err = sp.qsync.Sync()
	}
	if err != nil {
		os.Remove(tmp)
		os.Remove(sp.path(rec.ID))
		return 0, 0, err
	}
	return off, int64(len(prefix)) + n, nil
}

// writeState replaces the entry's state file atomically and durably.
func (sp *spool) writeState(id string, st *state) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := filepath.Join(sp.tmpdir, id+".state")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, sp.statePath(id))
	}
	if err == nil {
		err = sp.qsync.Sync()
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// remove deletes an entry's files (the message first: a state file alone is
// an orphan that the loader removes).
func (sp *spool) remove(id string) error {
	err := os.Remove(sp.path(id))
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	os.Remove(sp.statePath(id))
	return err
}

// quarantine moves an entry's files to corrupt/ so that nothing is lost.
func (sp *spool) quarantine(id string) {
	for _, name := range []string{id, id + ".state"} {
		src := filepath.Join(sp.qdir, name)
		if _, err := os.Stat(src); err != nil {
			continue
		}
		dst := filepath.Join(sp.baddir, name)
		if _, err := os.Stat(dst); err == nil {
			dst += "." + time.Now().Format("20060102T150405.000000000")
		}
		os.Rename(src, dst)
	}
	groupsync.Dir(sp.qdir)
}

// loaded is one entry read back from disk.
type loaded struct {
	rec     record
	st      state
	bodyOff int64
	size    int64
}

// load reads every entry. Unreadable ones are logged and moved aside;
// orphan state files are removed.
func (sp *spool) load(logger *zap.Logger, skip func(id string) bool) ([]loaded, error) {
	names, err := os.ReadDir(sp.qdir)
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	var out []loaded
	for _, de := range names {
		name := de.Name()
		if strings.HasSuffix(name, ".state") || strings.HasPrefix(name, ".") || !de.Type().IsRegular() {
			continue
		}
		if skip(name) {
			have[name] = true
			continue
		}
		l, err := sp.readEntry(name)
		if errors.Is(err, os.ErrNotExist) {
			continue // removed since the listing
		}
		var se *stateError
		if errors.As(err, &se) {
			logger.Error("unreadable queue state moved aside; the message is kept and retried for every recipient",
				zap.String("id", name), zap.String("to", se.movedTo), zap.Error(se.err))
			err = nil
		}
		if err != nil {
			logger.Error("corrupt queue entry moved aside", zap.String("id", name),
				zap.String("to", sp.baddir), zap.Error(err))
			sp.quarantine(name)
			continue
		}
		have[name] = true
		out = append(out, l)
	}
	for _, de := range names {
		name := de.Name()
		if id, ok := strings.CutSuffix(name, ".state"); ok && !have[id] {
			if _, err := os.Stat(sp.path(id)); errors.Is(err, os.ErrNotExist) {
				os.Remove(filepath.Join(sp.qdir, name))
			}
		}
	}
	return out, nil
}

func (sp *spool) readEntry(id string) (loaded, error) {
	var l loaded
	f, err := os.Open(sp.path(id))
	if err != nil {
		return l, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return l, err
	}
	br := bufio.NewReaderSize(f, 64*1024)
	line, err := readLine(br, maxEnvelopeLine)
	if err != nil {
		return l, fmt.Errorf("reading envelope: %v", err)
	}
	rest, ok := bytes.CutPrefix(line, []byte(fileMagic))
	if !ok {
		return l, fmt.Errorf("not a queue file (bad magic)")
	}
	if err := json.Unmarshal(rest, &l.rec); err != nil {
		return l, fmt.Errorf("decoding envelope: %v", err)
	}
	if l.rec.ID != id {
		return l, fmt.Errorf("envelope id %q does not match the file name", l.rec.ID)
	}
	if len(l.rec.Recipients) == 0 {
		return l, fmt.Errorf("envelope has no recipients")
	}
	for i, r := range l.rec.Recipients {
		if strings.LastIndexByte(r.Address, '@') <= 0 {
			return l, fmt.Errorf("recipient %d: bad address %q", i, r.Address)
		}
	}
	l.bodyOff = int64(len(line))
	l.size = fi.Size() - l.bodyOff
	l.st = state{Rcpts: make([]rcptState, len(l.rec.Recipients))}
	if b, err := os.ReadFile(sp.statePath(id)); err == nil {
		var st state
		if err := json.Unmarshal(b, &st); err != nil || len(st.Rcpts) != len(l.rec.Recipients) {
			// The message is fine; only its progress is lost. Delivering
			// again to all is better than losing any.
			if err == nil {
				err = fmt.Errorf("%d recipients, want %d", len(st.Rcpts), len(l.rec.Recipients))
			}
			bad := filepath.Join(sp.baddir, id+".state")
			os.Rename(sp.statePath(id), bad)
			return l, &stateError{err: err, movedTo: bad}
		}
		l.st = st
	}
	return l, nil
}

// stateError reports an unreadable state file; the entry itself is usable.
type stateError struct {
	err     error
	movedTo string
}

func (e *stateError) Error() string { return "state file: " + e.err.Error() }

// readLine reads up to and including '\n', at most max bytes.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, fmt.Errorf("line longer than %d bytes", max)
		}
		if err == nil {
			return line, nil
		}
		if err != bufio.ErrBufferFull {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}
