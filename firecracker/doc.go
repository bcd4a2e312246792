// Package firecracker serves the page faults of virtual machines restored
// from a memory snapshot by Firecracker (its "Uffd" memory backend), and
// records and replays their working sets.
//
// It stands for the kernel's anonymous-memory fault path: do_anonymous_page
// and do_swap_page. A VMM's guest memory is an anonymous private mapping;
// each first touch of one of its pages is a MISSING fault that this package
// resolves by filling a private page from a backing store — the snapshot's
// memory file, as swap-in fills a page from the swap device — through
// filemap's shared page cache and the swap cache's readahead. The page is
// installed by copying (UFFDIO_COPY), never by mapping the cache: the
// guest owns and writes its memory.
//
// The protocol is Firecracker's, exactly: the handler listens on a Unix
// socket before the VMM connects; one message carries a JSON array of the
// guest memory regions and, as SCM_RIGHTS, the VMM's userfaultfd; the
// connection then stays open until the VMM exits. UFFD_EVENT_REMOVE (the
// balloon's MADV_DONTNEED) makes a range read as zeros from then on, through
// restarts of the handler too (keep.go, vmState).
//
// Several VMs restored from one memory file at once share one page cache:
// the store is read once per page however many guests fault on it.
//
// A restore's first-fault order can be recorded (Config.Record) in a small
// binary format (see EncodeRecord) and replayed at the next restore
// (Config.Prefetch): the recorded pages are fetched into the cache and
// copied into the guest in recorded order, in batches, while the guest's own
// faults always go first. From a remote store, which fetches in chunks
// (store/remote), the replay plans the record by chunk instead: each chunk
// the record touches is fetched once, by one request or a few, a window of
// chunks at a time, in the order the record first needs them, and only the
// recorded pages of it go into the cache and the guest.
//
// # Lock order
//
// Outermost first, as in package server's documentation, whose lower part
// (reclaim.Budget.mu, then pagecache.Cache.mu, then fault.Region.raMu)
// applies here too:
//
//	Server.mu            the caches (objects), VMs, handshakes in progress, listeners, keeper
//	  reclaim.Budget.mu  as in package server
//	vm.mu                orders copies into the guest (read) against REMOVE events (write)
//	  pagecache.Cache.mu
//	  recorder.mu        the record being written
//	vm.deferMu           the deferred faults and busy units; innermost
//
// Server.mu and a vm's mu are never held together.
package firecracker
