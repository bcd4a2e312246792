package server

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/filemap/filemap/fault"
	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/readahead"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

const ps = pagecache.PageSize

// attachment is one client userfaultfd and the regions of the client's
// memory it serves: a user-space mm's list of vmas, as far as filemap
// knows them. REMAP and UNMAP events edit the list; a FORK event makes a
// new attachment for the child.
type attachment struct {
	id       uint64
	ss       *session
	obj      *cachedObject   // the object its regions map
	held     []*cachedObject // the objects its regions map, kept from going idle until it closes
	file     *os.File        // owns the fd; waits for it to be readable
	u        *uffd.UFFD
	features uint64
	forked   bool        // a fork(2) child's: the daemon holds the only descriptor of its uffd (fork.go)
	kept     atomic.Bool // in the keeper (keep.go)

	mu      sync.Mutex
	regions []*fault.Region // protected by mu

	reading sync.WaitGroup // readers serving a message of it (reader.go)
	readMu  sync.Mutex     // held from reading a message to applying it, if an event (reader.go)
	ops     sync.WaitGroup // work that still refers to the fd
	stop    chan struct{}  // closed when close begins: a fault waiting for a slot gives up
	once    sync.Once
}

// newAttachment adopts a uffd received from a client, duplicated.
func newAttachment(ss *session, f *os.File, features uint64) (*attachment, error) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var derr error
	rc.Control(func(raw uintptr) { fd, derr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0) })
	if derr != nil {
		return nil, fmt.Errorf("dup uffd: %w", derr)
	}
	if err := checkUffd(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return adopt(ss, fd, features)
}

// adopt makes an attachment of the uffd fd, which it owns, closed if it
// fails. The fd is made non-blocking for the reader pool (reader.go) after
// it is wrapped in an os.File: wrapped while non-blocking, it would also be
// in the runtime's poller, whose thread every fault would then wake for
// nothing.
func adopt(ss *session, fd int, features uint64) (*attachment, error) {
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uffd: %w", err)
	}
	file := os.NewFile(uintptr(fd), "uffd")
	if err := unix.SetNonblock(fd, true); err != nil {
		file.Close()
		return nil, fmt.Errorf("uffd: set non-blocking: %w", err)
	}
	u := uffd.FromFd(fd)
	u.SetFeatures(features)
	return &attachment{
		id:       ss.s.nextID.Add(1),
		ss:       ss,
		file:     file,
		u:        u,
		features: features,
		stop:     make(chan struct{}),
	}, nil
}

// checkUffd makes sure a descriptor a client called its uffd is one: the
// ioctls that follow must never land on some other kind of file.
func checkUffd(fd int) error {
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return fmt.Errorf("inspect the uffd: %w", err)
	}
	if link != "anon_inode:[userfaultfd]" {
		return fmt.Errorf("the descriptor sent as a userfaultfd is %q", link)
	}
	return nil
}

func (a *attachment) add(o *fault.File, addr uintptr, pgoff, npages int64, advice readahead.Advice) {
	r := &fault.Region{File: o, Addr: addr, PgOff: pgoff, NPages: npages, Target: a.u}
	r.SetAdvice(advice)
	a.mu.Lock()
	a.regions = append(a.regions, r)
	a.mu.Unlock()
}

func (a *attachment) regionCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.regions)
}

func (a *attachment) setAdvice(adv readahead.Advice) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range a.regions {
		r.SetAdvice(adv)
	}
}

// willNeed reads the object's bytes [off, off+n) in the background. The
// range is the client's word: it is clamped to the object, whatever its
// sign or size, and off+n may overflow.
func (a *attachment) willNeed(off, n int64) {
	a.mu.Lock()
	var r *fault.Region
	if len(a.regions) > 0 {
		r = a.regions[0]
	}
	a.mu.Unlock()
	if r == nil {
		return
	}
	start, end := pageRange(off, n, r.File.Cache.Size())
	if start < end {
		a.ss.s.faults.WillNeed(r.File, start, end)
	}
}

// pageRange is the pages of the bytes [off, off+n) of an object of size
// bytes, clamped to it; empty (start >= end) if they miss it.
func pageRange(off, n, size int64) (start, end int64) {
	if n <= 0 {
		return 0, 0
	}
	last := off + n
	if last < off { // overflowed: the range runs past any object's end
		last = size
	}
	lo, hi := max(off, 0), min(last, size)
	if lo >= hi {
		return 0, 0
	}
	return lo / ps, (hi + ps - 1) / ps
}

func (a *attachment) regionAt(addr uintptr) *fault.Region {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range a.regions {
		if r.Contains(addr) {
			return r
		}
	}
	return nil
}

// serve has the daemon's readers read the uffd until the attachment is
// closed.
func (a *attachment) serve() { a.ss.s.readers.add(a) }

func (a *attachment) dispatch(m *uffd.Msg) {
	switch m.Event {
	case uffd.EventPagefault:
		addr := uintptr(m.Address) &^ (ps - 1)
		r := a.regionAt(addr)
		if r == nil {
			// Not ours (any more): an UNMAP raced the fault. Waking lets the
			// access run again against whatever is mapped there now.
			a.u.Wake(addr, ps)
			return
		}
		a.fault(r, addr) // limits.go: the client's faults in flight are bounded
	case uffd.EventFork:
		a.fork(m.UFD)
	case uffd.EventRemap:
		a.remap(uintptr(m.From), uintptr(m.To), uintptr(m.Len))
	case uffd.EventUnmap:
		a.unmap(uintptr(m.Start), uintptr(m.End))
	case uffd.EventRemove:
		// MADV_DONTNEED or MADV_REMOVE by the client: its page table entries
		// are gone but the cache is not, so the next access is the kernel's
		// own minor fault. Nothing to forget.
	}
}

// remap follows mremap(2): the part of any region inside [from, from+n)
// now lives at to.
func (a *attachment) remap(from, to, n uintptr) {
	a.edit(from, from+n, func(r *fault.Region) *fault.Region {
		return a.clone(r, to+(r.Addr-from), r.PgOff, r.NPages)
	})
	a.keep()
}

// unmap follows munmap(2): the part of any region inside [start, end) is gone.
func (a *attachment) unmap(start, end uintptr) {
	a.edit(start, end, func(*fault.Region) *fault.Region { return nil })
	if !a.unmapped() {
		a.keep()
	}
}

// edit splits every region at start and end and replaces each piece inside
// [start, end) with what f returns (nil drops it).
func (a *attachment) edit(start, end uintptr, f func(*fault.Region) *fault.Region) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*fault.Region
	for _, r := range a.regions {
		rEnd := r.Addr + uintptr(r.NPages)*ps
		lo, hi := max(start, r.Addr), min(end, rEnd)
		if lo >= hi {
			out = append(out, r)
			continue
		}
		if r.Addr < lo {
			out = append(out, a.clone(r, r.Addr, r.PgOff, int64(lo-r.Addr)/ps))
		}
		if in := f(a.clone(r, lo, r.PgOff+int64(lo-r.Addr)/ps, int64(hi-lo)/ps)); in != nil {
			out = append(out, in)
		}
		if hi < rEnd {
			out = append(out, a.clone(r, hi, r.PgOff+int64(hi-r.Addr)/ps, int64(rEnd-hi)/ps))
		}
	}
	a.regions = out
}

func (a *attachment) clone(r *fault.Region, addr uintptr, pgoff, npages int64) *fault.Region {
	c := &fault.Region{File: r.File, Addr: addr, PgOff: pgoff, NPages: npages, Target: r.Target}
	c.SetAdvice(r.Advice())
	return c
}

// close stops serving: the readers stop, the faults in progress finish (so
// no ioctl can land on a recycled fd number), then the fd is closed. The
// client keeps its own copy of the uffd, so a fault still pending stalls
// instead of reading zeros. A fork child has no copy: its pages are
// poisoned first, unless the keeper keeps its uffd for the next daemon.
func (a *attachment) close() {
	a.once.Do(func() {
		close(a.stop)
		a.unkeep()
		a.ss.s.readers.remove(a, false)
		a.ops.Wait()
		if a.forked && !a.keptForSuccessor() {
			a.poison()
		}
		a.file.Close()
		a.ss.client.releaseRegion()
		for _, o := range a.held {
			a.ss.s.release(o)
		}
	})
}

// hold keeps o, whose cache a region of a maps, from going idle until a
// closes: a client may close its handle and go on faulting on its mapping,
// and so may a forked child of it.
func (a *attachment) hold(o *cachedObject) {
	a.ss.s.mu.Lock()
	a.ss.s.refLocked(o)
	a.ss.s.mu.Unlock()
	a.held = append(a.held, o)
}
