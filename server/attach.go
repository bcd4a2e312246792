package server

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

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
	obj      *object  // the object its regions map; nil for a FORK child's
	file     *os.File // owns the fd; waits for it to be readable
	u        *uffd.UFFD
	features uint64

	mu      sync.Mutex
	regions []*fault.Region

	ops  sync.WaitGroup // work that still refers to the fd
	stop chan struct{}  // closed when close begins: a fault waiting for a slot gives up
	done chan struct{}
	once sync.Once
}

// newAttachment adopts a uffd received from a client. The fd is duplicated
// and made non-blocking so that the runtime's poller can wait on it.
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
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uffd: set non-blocking: %w", err)
	}
	return adopt(ss, fd, features), nil
}

func adopt(ss *session, fd int, features uint64) *attachment {
	u := uffd.FromFd(fd)
	u.SetFeatures(features)
	return &attachment{
		id:       ss.s.nextID.Add(1),
		ss:       ss,
		file:     os.NewFile(uintptr(fd), "uffd"),
		u:        u,
		features: features,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
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

func (a *attachment) add(o *fault.Object, addr uintptr, pgoff, npages int64, advice readahead.Advice) {
	r := &fault.Region{Obj: o, Addr: addr, PgOff: pgoff, NPages: npages, Target: a.u}
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

// willNeed reads the object's bytes [off, off+n) in the background.
func (a *attachment) willNeed(off, n int64) {
	a.mu.Lock()
	var r *fault.Region
	if len(a.regions) > 0 {
		r = a.regions[0]
	}
	a.mu.Unlock()
	if r == nil || n <= 0 {
		return
	}
	a.ss.s.faults.WillNeed(r.Obj, off/ps, (off+n+ps-1)/ps)
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

// serve reads the uffd until the attachment is closed. Reading never waits
// for I/O: faults that need it run in goroutines counted by ops.
func (a *attachment) serve() {
	defer close(a.done)
	rc, err := a.file.SyscallConn()
	if err != nil {
		a.ss.log.Error("uffd: cannot poll", "err", err)
		return
	}
	msgs := make([]uffd.Msg, 64)
	for {
		var n int
		var rerr error
		err := rc.Read(func(uintptr) bool {
			n, rerr = a.u.Read(msgs)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil {
			return // closed or stopped by close()
		}
		if rerr != nil {
			a.ss.log.Error("uffd: read failed; no longer serving this region", "region", a.id, "err", rerr)
			return
		}
		for i := range msgs[:n] {
			a.dispatch(&msgs[i])
		}
	}
}

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

// fork serves a child made by fork(2): the same regions, through the uffd
// the kernel installed in our fd table for the child's mm.
func (a *attachment) fork(fd int) {
	child := adopt(a.ss, fd, a.features)
	a.mu.Lock()
	for _, r := range a.regions {
		c := &fault.Region{Obj: r.Obj, Addr: r.Addr, PgOff: r.PgOff, NPages: r.NPages, Target: child.u}
		c.SetAdvice(r.Advice())
		child.regions = append(child.regions, c)
	}
	a.mu.Unlock()
	a.ss.client.addRegion() // counted, never refused: the child's faults must be served
	if !a.ss.addAttachment(child) {
		a.ss.client.releaseRegion()
		child.file.Close()
		return
	}
	go child.serve()
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
	a.keep()
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
	c := &fault.Region{Obj: r.Obj, Addr: addr, PgOff: pgoff, NPages: npages, Target: r.Target}
	c.SetAdvice(r.Advice())
	return c
}

// close stops serving: the reader stops, the faults in progress finish (so
// no ioctl can land on a recycled fd number), then the fd is closed. The
// client keeps its own copy of the uffd, so a fault still pending stalls
// instead of reading zeros.
func (a *attachment) close() {
	a.once.Do(func() {
		close(a.stop)
		a.unkeep()
		a.file.SetReadDeadline(time.Unix(1, 0))
		<-a.done
		a.ops.Wait()
		a.file.Close()
		a.ss.client.releaseRegion()
	})
}
