package server

import (
	"fmt"

	"github.com/filemap/filemap/store"
)

// changedStore stands for an object that changed while no daemon served a
// client that maps it: the client's cache file, adopted, holds the pinned
// version's pages, and every other page is one that version can no longer
// give. A read fails with store.ErrChanged, which the fault path neither
// retries nor hides: the faulter gets SIGBUS.
type changedStore struct {
	store.Store        // the object as it is now, for its key and Close
	name        string // in errors
	version     string // pinned
	size        int64  // of the pinned version
	now         string // the version the object has now
}

func (c changedStore) ReadAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("%s at offset %d: %w: pinned version %s, now %s", c.name, off, store.ErrChanged, c.version, c.now)
}

func (c changedStore) Size() int64     { return c.size }
func (c changedStore) Version() string { return c.version }
