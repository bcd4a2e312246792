package server

import (
	"container/list"

	"github.com/filemap/filemap/store"
)

// DefaultMaxIdleCaches is how many caches no client has open a daemon
// keeps unless told otherwise.
const DefaultMaxIdleCaches = 1024

// The caches no client has open: the kernel's unused inodes, kept with
// their page cache so that opening the same bytes again finds them warm,
// and evicted least recently used first past a bound. Their pages are
// reclaimed under the budget like any others; what the bound limits is the
// rest of what each holds (its cache file and store descriptors, its page
// table, a remote store's connections). A store's memory for reads to
// come (store.Idler) is given back as soon as its object goes idle.
//
// A private cache (a client's, adopted: server.go) is never kept for a
// later Open: it waits at the back of the list, first to go, only while
// fills are in flight. An idle cache with fills still in flight (readahead
// a client started before it let go) is passed over until they end:
// freeing it would close the file they write into.
type idleCaches struct {
	max int       // negative: none kept
	lru list.List // of *object, the most recently released at the front
}

// idleLocked puts o, whose last reference has gone, on the list, and frees what
// the bound no longer allows. Called with s.mu held.
func (s *Server) idleLocked(o *cachedObject) {
	if i, ok := o.file.Store.(store.Idler); ok {
		i.Idle()
	}
	if o.private() {
		o.idle = s.idleCaches.lru.PushBack(o)
	} else {
		o.idle = s.idleCaches.lru.PushFront(o)
	}
	s.trimIdleLocked()
}

// refLocked takes a reference to o, off the list if it was idle. Called with
// s.mu held.
func (s *Server) refLocked(o *cachedObject) {
	o.refs++
	s.unidleLocked(o)
}

// unidleLocked takes o off the list: it has a reference again, or is freed.
// Called with s.mu held.
func (s *Server) unidleLocked(o *cachedObject) {
	if o.idle != nil {
		s.idleCaches.lru.Remove(o.idle)
		o.idle = nil
	}
}

// trimIdleLocked frees the private caches and the least recently released ones
// past the bound, those with no fill in flight. Called with s.mu held.
func (s *Server) trimIdleLocked() {
	l := &s.idleCaches.lru
	for e := l.Back(); e != nil; {
		o := e.Value.(*cachedObject)
		e = e.Prev()
		if !o.private() && l.Len() <= max(s.idleCaches.max, 0) {
			return // the private ones, all at the back, are done with
		}
		if o.file.Cache.Busy() {
			continue
		}
		s.freeLocked(o)
	}
}
