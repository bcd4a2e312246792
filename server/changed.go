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

// pin is st as the version a client maps, which a daemon found again after
// a restart: st itself if the object still has that version ("" is any)
// and size, else a changedStore, logged and counted, over it.
func (s *Server) pin(st store.Store, name, version string, size int64) store.Store {
	if (version == "" || version == st.Version()) && size == st.Size() {
		return st
	}
	s.log.Error("object changed while no daemon served its mapping: SIGBUS for pages not cached",
		"object", name, "pinned", version, "now", st.Version())
	s.metrics.Changed(name)
	return changedStore{Store: st, name: name, version: version, size: size, now: st.Version()}
}

func (c changedStore) ReadAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("%s at offset %d: %w: pinned version %s, now %s", c.name, off, store.ErrChanged, c.version, c.now)
}

func (c changedStore) Size() int64     { return c.size }
func (c changedStore) Version() string { return c.version }
