// Package server is filemap's handler daemon, `filemap serve`: the kernel's
// memory-management side of mmap(2). It keeps one page cache per object,
// shared by every client of one uid that opens the same version of it, and
// serves the page faults of the regions clients attach, each through the
// client's own userfaultfd.
//
// A client that misbehaves loses its own connection and nothing else: a bad
// frame closes that session, a dead client's regions are torn down when its
// socket closes, and one slow store read holds up only the faults that wait
// for those pages.
//
// # Names
//
// One name per thing, in every package:
//
//   - A handler is the process that serves a mapping's faults: the
//     daemon, `filemap serve` (a Server), or a private handler, the child
//     process package filemap starts for a program when no daemon is
//     named, which runs a Server of its own. fault.Handler is the fault
//     path both run (the kernel's handle_mm_fault). In package firecracker
//     the handler is, in Firecracker's word, the process that serves a
//     VM's faults.
//   - An object is what a client maps: a file, an HTTP resource, an S3
//     object. Its pages are held by a pagecache.Cache (an address_space);
//     a fault.File pairs that cache with the store its pages are read
//     from, as the kernel's struct file leads to both. The daemon's
//     cachedObject is one of them with its key, references and idle-list
//     place, shared by the clients of one uid that open that version.
//   - A fault.Region is a range of a client's memory that maps a cache:
//     the kernel's vm_area_struct. A firecracker.GuestRegion is one of a
//     VM's guest memory regions, as Firecracker's handshake describes it.
//   - A knob has one name from its flag to its use: --readahead is
//     ReadaheadPages, --readahead-max ReadaheadMaxPages, --read-buffers
//     ReadBuffers and --readahead-inflight ReadaheadInflight, in every
//     Config that has it (the flags take bytes; a field says Pages where
//     it counts pages).
//
// # Lock order
//
// Locks nest in this order, outermost first: a lock may be taken while
// those above it on its branch are held, never while one below it is, and
// locks on different branches are never held together. Each protects the
// fields its struct says it does ("protects the fields below", "protected
// by mu"); a function that must be called with a lock held ends in Locked.
//
//	attachment.readMu          a uffd's next message, from its read until an event in it is applied (reader.go)
//	  Server.mu                the objects, idle caches, sessions, orphans, fork children, keeper and listeners
//	    session.mu             a session's handles and attachments
//	      attachment.mu        an attachment's regions
//	    clientTable.mu         the table of client accounts (limits.go)
//	      client.mu            one client's account and faults in flight
//	    reclaim.Budget.mu      the LRU lists and resident count of all caches; eviction punches under it
//	      pagecache.Cache.mu   one cache's page states, fills and markers
//	        fault.Region.raMu  a region's readahead state: a miss's window is chosen under the cache's lock
//	        collapser.mu       the collapses queued and running (pagecache)
//	    remote.Store.mu        a remote store's fetches in flight and chunks cached
//	      slots.mu             its request slots (remote)
//	    diskcache.Cache.mu     the disk cache's objects, chunks and LRU
//
// Server.mu is never held across a wait for another goroutine or for the
// network: an object freed under it is closed (its cache's collapses
// waited for, its store's requests ended) once it is released
// (Server.unlock).
//
// Remotes.mu closes the disk cache under it: it comes before
// diskcache.Cache.mu and is never held with Server.mu. The other locks
// are leaves, innermost wherever they are taken: readerPool.mu,
// timedStore.mu, the fault path's buffers' and disk queue's, a remote
// fetch's race.mu, and a cache file's write lock (pagecache.writeLock),
// which is never held with the cache's own.
package server
