package queue

// The spool folder's syncs are group-committed (modules/internal/groupsync,
// as the maildir module's new/): concurrent enqueues share one sync of
// queue/, and every 250 still follows a sync that covers its own file.

// Test hooks (nil outside tests): spoolSyncHook sees each folder sync
// start and end, spoolWriteHook each message file written in tmp/ (by its
// path to be in queue/), before its sync, spoolRenameHook each message
// file renamed into queue/.
var (
	spoolSyncHook   func(dir string, start bool)
	spoolWriteHook  func(path string)
	spoolRenameHook func(path string)
)

// callSyncHook reads the hook when a sync runs, so tests may set it late.
func callSyncHook(dir string, start bool) {
	if spoolSyncHook != nil {
		spoolSyncHook(dir, start)
	}
}
