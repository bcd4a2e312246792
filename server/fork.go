package server

// A fork(2) child's mappings. A client that asks for
// UFFD_FEATURE_EVENT_FORK (the C library and the Python module do) keeps
// its mappings in its children, as the kernel keeps a MAP_PRIVATE mapping
// of a file across fork: in a fork event on the parent's uffd, the kernel
// gives the daemon a new uffd for the child's copy, and the daemon holds
// its only descriptor. Were that closed while the child maps the range,
// the kernel would unregister the range, and the child's next read of a
// page the cache lacks would be an ordinary fault on the cache file: a
// zero page put into the shared cache, where every client of the uid, and
// a cache kept for the next daemon, would find it as the object's bytes.
//
// So a child's attachment lives in a session of its own, with no
// connection, counted in its parent client's account, and not in the
// parent's session, which ends when the parent exits or closes its
// connection while its children go on. It ends when the child maps none
// of it any more (UNMAP events remove its regions) or the child's address
// space is gone; the kernel tells no handler when a process exits or
// execs, so the daemon asks, every forkProbeInterval (uffd.UFFD.Alive).
// The keeper keeps it as it keeps a client's region, and forgets it in the
// same way (fdstore.Entry.Probe). A child's uffd the daemon is about to
// close while the child may still map it (the daemon stops with no keeper
// to hand it to) first has its pages poisoned: the child gets SIGBUS for a
// page it had not mapped, as for a page that cannot be read, never zeros.

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/filemap/filemap/fault"
	"github.com/filemap/filemap/internal/fdstore"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

// forkProbeInterval is how often the daemon asks whether a fork child's
// address space is still there.
const forkProbeInterval = time.Second

// maxPoisonPasses bounds the passes poison makes over a closing child's
// regions, each after applying the events that made the last one fail.
const maxPoisonPasses = 10

// fork serves a child made by fork(2): the same regions, through the uffd
// the kernel installed in our fd table for the child's mm.
func (a *attachment) fork(fd int) {
	s, log := a.ss.s, a.ss.log
	if !a.forked {
		log = log.With("fork", true)
	}
	ss := s.forkSession(a.ss.cred, log)
	child, err := adopt(ss, fd, a.features)
	if err != nil {
		ss.close()
		a.ss.log.Error("cannot serve a forked child: it may read zeros where the cache has no page", "region", a.id, "err", err)
		return
	}
	child.obj, child.forked = a.obj, true
	a.mu.Lock()
	for _, r := range a.regions {
		c := &fault.Region{File: r.File, Addr: r.Addr, PgOff: r.PgOff, NPages: r.NPages, Target: child.u}
		c.SetAdvice(r.Advice())
		child.regions = append(child.regions, c)
	}
	a.mu.Unlock()
	// a cannot close before this message is handled (reader.go): its
	// objects are held still.
	for _, o := range a.held {
		child.hold(o)
	}
	ss.client.addRegion() // counted, never refused: the child's faults must be served
	ss.mu.Lock()
	ss.attachments[child.id] = child
	ss.mu.Unlock()
	// Kept before it is served: a daemon closing meanwhile leaves it to
	// the next one rather than dropping it.
	child.keep()
	child.watch()
	if !s.addFork(ss) {
		ss.close() // the daemon is closing: kept, or poisoned
		return
	}
	child.serve()
}

// forkSession is the session of a fork child's attachment: no connection,
// and the account of cred's client, the parent, in which the child's
// regions and faults count as the parent's own do.
func (s *Server) forkSession(cred *unix.Ucred, log *slog.Logger) *session {
	return &session{s: s, cred: cred, log: log, client: s.clients.join(cred),
		handles: make(map[uint64]*cachedObject), attachments: make(map[uint64]*attachment)}
}

// addFork registers a fork child's session; false if the daemon is
// closing, and then the caller closes it.
func (s *Server) addFork(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.forks[ss] = struct{}{}
	return true
}

// endFork stops serving a fork child's session, unless Close has taken it
// to close it already.
func (s *Server) endFork(ss *session) {
	s.mu.Lock()
	_, ok := s.forks[ss]
	delete(s.forks, ss)
	s.mu.Unlock()
	if ok {
		ss.close()
	}
}

// watch ends a fork child's session once the child no longer maps any of
// it or its address space is gone. It runs in a's ops, so that its probe
// never lands on a closed descriptor, and leaves when a closes; it is
// started before a can be closed, for ops must not grow while close waits
// for them.
func (a *attachment) watch() {
	a.ops.Go(func() {
		t := time.NewTicker(forkProbeInterval)
		defer t.Stop()
		for {
			select {
			case <-a.stop:
				return
			case <-t.C:
			}
			if addr, ok := a.firstAddr(); !ok || !a.u.Alive(addr) {
				// endFork closes a, which waits for this to return. Until
				// a's session is registered it does nothing: try again.
				go a.ss.s.endFork(a.ss)
			}
		}
	})
}

// firstAddr is the address of a's first region; false if it has none.
func (a *attachment) firstAddr() (uintptr, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.regions) == 0 {
		return 0, false
	}
	return a.regions[0].Addr, true
}

// unmapped ends a fork child's attachment that its child has unmapped
// whole, and reports whether it did. It is called by the reader that
// applied the UNMAP, which closing a would wait for.
func (a *attachment) unmapped() bool {
	if !a.forked || a.regionCount() > 0 {
		return false
	}
	go a.ss.s.endFork(a.ss)
	return true
}

// poison makes every page of a's regions that the child has not mapped
// raise SIGBUS, before a's uffd, the only one the child's mm has, is
// closed: the child would read the cache file's holes as zeros otherwise,
// and put them into the cache. A page mapped (or poisoned) already is
// skipped: the child keeps it. An unread event (fork, mremap, munmap)
// makes the ioctl fail with EAGAIN until it is read, and the reader pool
// reads a no more: poison applies it itself, and starts again over the
// regions as the event left them.
func (a *attachment) poison() {
	var pages int64
	var err error
	for pass := 0; pass < maxPoisonPasses; pass++ {
		var n int64
		n, err = a.poisonPass()
		pages += n
		if !errors.Is(err, unix.EAGAIN) || !a.applyEvents() {
			break
		}
	}
	if pages > 0 || err != nil && !errors.Is(err, unix.ESRCH) {
		a.ss.log.Warn("a fork child's mapping is no longer served: the pages it had not mapped raise SIGBUS",
			"region", a.id, "object", a.objectName(), "poisoned_pages", pages, "err", err)
	}
}

// poisonPass poisons each of a's regions in turn, and returns the pages it
// poisoned and the error that stopped it: ESRCH, the child is gone;
// EAGAIN, an event is unread.
func (a *attachment) poisonPass() (pages int64, err error) {
	a.mu.Lock()
	regions := slices.Clone(a.regions)
	a.mu.Unlock()
	for _, r := range regions {
		n, err := poisonRange(a.u, r.Addr, r.Addr+uintptr(r.NPages)*ps)
		pages += n
		if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.EAGAIN) {
			return pages, err
		}
		if err != nil {
			a.ss.log.Error("UFFDIO_POISON of a fork child's region failed: the rest of it may read zeros",
				"region", a.id, "object", r.File.Cache.Name(), "addr", fmt.Sprintf("%#x", r.Addr), "err", err)
		}
	}
	return pages, nil
}

// poisonRange poisons the pages of [start, end) that u's mm has not
// mapped, and returns how many it poisoned. One UFFDIO_POISON covers one
// vma: a range the child has split (mprotect, madvise) fails with ENOENT
// as a whole, and is poisoned in halves until the pieces fit.
func poisonRange(u *uffd.UFFD, start, end uintptr) (pages int64, err error) {
	for addr, n := start, end-start; addr < end; {
		n = min(n, end-addr)
		done, err := u.Poison(addr, n, uffd.PoisonModeDontWake)
		addr += done
		pages += int64(done / ps)
		switch {
		case err == nil:
			n = end - addr
		case errors.Is(err, unix.ENOENT) && n > ps:
			n = n / 2 &^ (ps - 1)
		case errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENOENT), errors.Is(err, unix.EFAULT):
			// Mapped or poisoned already (the child keeps it), not
			// registered or not mapped at all, or past the end of the
			// cache file, where the kernel raises SIGBUS itself.
			addr += ps
			n = end - addr
		default:
			return pages, err
		}
	}
	return pages, nil
}

// applyEvents reads the messages a's uffd holds, once the reader pool no
// longer reads it, and applies its events; it reports whether there were
// any. Faults are left: closing the uffd wakes them.
func (a *attachment) applyEvents() bool {
	a.readMu.Lock()
	defer a.readMu.Unlock()
	var msgs [16]uffd.Msg
	n, _ := a.u.Read(msgs[:])
	events := false
	for _, m := range msgs[:n] {
		if m.Event != uffd.EventPagefault {
			a.dispatch(&m)
			events = true
		}
	}
	return events
}

// objectName names the object a maps, for logs.
func (a *attachment) objectName() string {
	if a.obj == nil {
		return ""
	}
	return a.obj.file.Cache.Name()
}

// restoreFork serves a fork child's region that the previous daemon left
// (keep.go) in a session of its own, as fork does.
func (s *Server) restoreFork(e fdstore.Entry, d keptRegion) (*attachment, error) {
	a, err := s.newKeptFork(e, d)
	if err != nil {
		// Nothing serves the child once the entry's uffd is closed, as it
		// is when restore returns.
		poisonKept(e.Files[0], d.Ranges)
		return nil, err
	}
	a.watch()
	if !s.addFork(a.ss) {
		a.ss.close() // poisons it: it is in no keeper
		return nil, fmt.Errorf("%s: the daemon is closing", d.Name)
	}
	a.serve()
	a.wakeKept(d.Ranges)
	return a, nil
}

// newKeptFork makes the attachment of a fork child's kept region, and its
// session, in the account of the client the child forked from.
func (s *Server) newKeptFork(e fdstore.Entry, d keptRegion) (*attachment, error) {
	st, hangs, err := s.reopenStore(d, e.Files)
	if err != nil {
		return nil, err
	}
	o, err := s.adoptKept(d, st, hangs, e.Files)
	if err != nil {
		return nil, err
	}
	cred := &unix.Ucred{Pid: d.Parent, Uid: d.UID}
	ss := s.forkSession(cred, s.log.With("pid", d.Parent, "uid", d.UID, "fork", true))
	a, err := newAttachment(ss, dupFile(e.Files[0]), d.Features)
	if err != nil {
		ss.close()
		s.release(o)
		return nil, err
	}
	a.id, a.obj, a.forked = e.ID, o, true
	a.held = append(a.held, o) // adoptKept's reference, released when a closes
	a.addKept(d.Ranges)
	ss.client.addRegion()
	ss.mu.Lock()
	ss.attachments[a.id] = a
	ss.mu.Unlock()
	return a, nil
}

// poisonKept poisons the pages of a kept fork child's ranges that the
// child has not mapped, through f, its uffd.
func poisonKept(f *os.File, ranges []keptRange) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	// Not f.Fd(), which would make the uffd blocking for every holder.
	rc.Control(func(fd uintptr) {
		u := uffd.FromFd(int(fd))
		for _, r := range ranges {
			poisonRange(u, uintptr(r.Addr), uintptr(r.Addr)+uintptr(r.NPages)*ps)
		}
	})
}
