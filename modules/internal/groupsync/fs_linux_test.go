package groupsync

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestKernelAtLeast(t *testing.T) {
	for _, c := range []struct {
		release string
		want    bool
	}{
		{"5.8.0", true}, {"5.7.19", false}, {"6.1.0-13-amd64", true}, {"5.10-rc1", true},
		{"4.19.0", false}, {"5.8+", true}, {"10.0", true}, {"5", false}, {"x.y", false}, {"", false},
	} {
		if got := kernelAtLeast(c.release, 5, 8); got != c.want {
			t.Errorf("kernelAtLeast(%q, 5, 8) = %v, want %v", c.release, got, c.want)
		}
	}
}

func TestFileSystem(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := SyncFileSystem(dir); err != nil {
		t.Fatal(err)
	}
	if err := SyncFileSystem(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("no error for a missing folder")
	}
}

func TestParseUnwritten(t *testing.T) {
	meminfo := "MemTotal:       24000000 kB\nDirty:              1200 kB\nWriteback:            24 kB\nWritebackTmp:      999 kB\n"
	if n, ok := parseUnwritten([]byte(meminfo)); !ok || n != (1200+24)<<10 {
		t.Fatalf("got %d, %v", n, ok)
	}
	for _, bad := range []string{"", "Dirty: 12 kB\n", "Dirty: x kB\nWriteback: 0 kB\n", "Dirty: 12 MB\nWriteback: 0 kB\n"} {
		if _, ok := parseUnwritten([]byte(bad)); ok {
			t.Errorf("%q: parsed", bad)
		}
	}
	if _, ok := Unwritten(); !ok {
		t.Fatal("cannot read this machine's /proc/meminfo")
	}
}

// TestFileSystemBusy: past the limit the syncer skips the sync (no hook
// call) and says ErrBusy; with room it syncs.
func TestFileSystemBusy(t *testing.T) {
	dir := t.TempDir()
	syncs := 0
	hook := func(string, bool) { syncs++ }
	busy, err := NewFileSystem(dir, func() bool { return Busy(-1) }, hook)
	if err != nil {
		t.Fatal(err)
	}
	if err := busy.Sync(); err != ErrBusy {
		t.Fatalf("busy: %v, want ErrBusy", err)
	}
	calm, err := NewFileSystem(dir, func() bool { return Busy(1 << 62) }, hook)
	if err != nil {
		t.Fatal(err)
	}
	if err := calm.Sync(); err != nil {
		t.Fatal(err)
	}
	if syncs != 2 { // start and end of the calm one only
		t.Fatalf("hook called %d times, want 2", syncs)
	}
}

// TestWrittenSharedChecksTheFile: a file covered by a shared sync is then
// asked for its own write errors; a file that cannot be asked (closed)
// fails rather than passing as synced.
func TestWrittenSharedChecksTheFile(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "m"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("message"); err != nil {
		t.Fatal(err)
	}
	syncs := 0
	FileSystemSyncHook = func(string, bool) { syncs++ }
	defer func() { FileSystemSyncHook = nil }()
	shared, synced := value(filesShared), value(metricFileSystemSyncs.WithLabelValues("synced"))
	if err := Written(f, dir, FileSystem); err != nil {
		t.Fatal(err)
	}
	if syncs != 2 {
		t.Fatalf("hook called %d times, want a start and an end", syncs)
	}
	if d := value(filesShared) - shared; d != 1 {
		t.Errorf("durable_files_total{how=shared} went up by %v, want 1", d)
	}
	if d := value(metricFileSystemSyncs.WithLabelValues("synced")) - synced; d != 1 {
		t.Errorf("file_system_syncs_total{result=synced} went up by %v, want 1", d)
	}
	f.Close()
	if err := checkWritten(f); err == nil {
		t.Fatal("checkWritten of a closed file: no error")
	}
}

// value reads a counter.
func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
