//go:build !unix

package groupsync

import "os"

// Dir syncs a folder once (fsync of its entries).
func Dir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
