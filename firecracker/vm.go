package firecracker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/filemap/filemap/fault"
	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/readahead"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

// vm is the handler of one restored VM: its regions, the VMM's userfaultfd,
// and which of its pages hold what. All of its pages are in one of three
// states: missing (its next touch is a fault message), installed (copied in
// by us: a touch is the guest's own business), or removed (the balloon gave
// it back with MADV_DONTNEED: it reads as zeros from then on, whatever the
// memory file holds).
type vm struct {
	s       *Server
	id      uint64
	log     *slog.Logger
	conn    *net.UnixConn
	u       *uffd.UFFD
	efd     int // eventfd: wakes the loop for deferred faults, prefetch batches, shutdown
	obj     *cachedObject
	regions []*vmRegion
	unit    uintptr // the guest's page size: 4 KiB, or 2 MiB for hugetlbfs
	upages  int64   // cache pages per unit
	start   time.Time

	// mu orders copies against REMOVE events: the loop holds it for
	// writing from the read of a batch of messages until its REMOVEs are
	// applied, and every copy holds it for reading and checks removed
	// first. So no copy of a file page lands in a range after its REMOVE
	// has been read: the kernel zaps the range only once the event is
	// read, and a copy after that would bring back the file's bytes where
	// the guest must see zeros.
	mu sync.RWMutex
	// installed and removed are indexed by the unit's offset in the
	// memory file divided by the unit. They are st's: they outlive the
	// handler.
	installed bitset
	removed   bitset
	st        *vmState
	// stale says the memory file is at another version than the one the
	// VM was restored from, and was when this handler took the VM over:
	// its pages not in the guest cannot be had any more, and get SIGBUS,
	// never the other version's bytes (a guest of two snapshots' pages).
	// Removed pages still read as zeros.
	stale bool

	deferMu  sync.Mutex // protects deferred, deferSet and busy
	deferred []uintptr  // faults to retry once the pending events are read, in order
	deferSet map[uintptr]struct{}
	// busy holds the units a worker is reading and copying in. A second
	// message for one of them is a duplicate (a signal made the faulting
	// thread run its access again) and is dropped: the worker's copy
	// wakes every thread waiting on the unit, and the kernel rechecks the
	// page table before a faulter sleeps, so none sleeps past it.
	busy map[int64]struct{}

	ops      sync.WaitGroup // workers that use the userfaultfd
	stopping atomic.Bool
	stopOnce sync.Once
	stopped  chan struct{}

	rec *recorder // nil unless this VM's first touches are recorded
	pf  *prefetch // nil unless a record is replayed into it

	pid     int    // the VMM's, for the keeper
	payload []byte // the handshake's regions, for the keeper

	faults, copied, zeroed atomic.Uint64
	strayLogged            atomic.Bool
}

// vmRegion is a guest region with the fault path's view of it.
type vmRegion struct {
	GuestRegion
	fr         *fault.Region // the fault path's region: read-around and its state
	first, end int64         // its units, by index in the memory file
}

// addr is the guest address of unit index i of the region.
func (r *vmRegion) addr(i int64) uintptr { return r.Base + uintptr(i-r.first)*r.PageSize }

// leftToVM is the fault path's Target in copy mode, which acts on no
// guest: the fault path fills the cache, and the VM handler does the rest
// once it returns (install). It copies a filled page into the guest and
// wakes its faulters, and poisons in the guest (vm.poison) a page the fault
// path gave up on, which it finds in the Error state.
type leftToVM struct{}

// Wake wakes nobody: install wakes the faulters once the page is copied in.
func (leftToVM) Wake(uintptr, uintptr) error { return nil }

// Poison poisons nothing, and reports the page poisoned: install poisons it
// in the guest. Reporting success has the fault path count and log the
// SIGBUS, once, as it does for a client's page.
func (leftToVM) Poison(_, n uintptr, _ uint64) (uintptr, error) { return n, nil }

// newVM makes the handler of a VM. fresh says it starts now: a VM taken
// over from a previous handler is neither recorded nor replayed into, and
// has the state the previous handler kept, if any (kept: its memfd).
func newVM(s *Server, id uint64, log *slog.Logger, c *net.UnixConn, fd int, o *cachedObject, rs []GuestRegion, fresh bool, kept *os.File) (*vm, error) {
	// Firecracker makes its userfaultfd non-blocking already; a VMM that
	// did not would have the loop sleep in read(2) instead of poll(2).
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("userfaultfd: set non-blocking: %w", err)
	}
	unit := rs[0].PageSize
	size := o.file.Cache.Size()
	nunits := (size + int64(unit) - 1) / int64(unit)
	st, err := loadState(log, unit, nunits, o.key.version, fresh, kept)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		st.close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	v := &vm{s: s, id: id, log: log, conn: c, u: uffd.FromFd(fd), efd: efd, obj: o, unit: unit,
		upages: int64(unit / PageSize), start: time.Now(), installed: st.installed, removed: st.removed, st: st,
		stale:    st.version != o.key.version,
		deferSet: make(map[uintptr]struct{}), busy: make(map[int64]struct{}), stopped: make(chan struct{})}
	if v.stale {
		log.Error("firecracker: the memory file changed since this VM was restored: its pages not in the guest yet get SIGBUS",
			"memory", s.cfg.Name, "restored_version", st.version, "version", o.key.version)
	}
	for _, r := range rs {
		fr := &fault.Region{File: &o.file, Addr: r.Base, PgOff: r.Offset / PageSize, NPages: int64(r.Size / PageSize), Target: leftToVM{}}
		if unit != PageSize {
			// A huge page is read whole, in one go (fillHuge); the fault
			// path is only asked for the odd page of it that failed.
			fr.SetAdvice(readahead.Random)
		}
		v.regions = append(v.regions, &vmRegion{GuestRegion: r, fr: fr,
			first: r.Offset / int64(unit), end: (r.Offset + int64(r.Size)) / int64(unit)})
	}
	if fresh && s.takeRecord() {
		rec, err := newRecorder(s.cfg.Record, int64(unit), size, o.key.version, v.start)
		if err != nil {
			log.Error("firecracker: cannot record this restore", "err", err)
		} else {
			v.rec = rec
		}
	}
	if fresh && s.record != nil {
		v.pf = newPrefetch(v, s.record)
	}
	return v, nil
}

// loadState maps the state a previous handler kept (kept, its memfd), or
// makes a VM's state anew: for a VM restored now (fresh), or one whose
// previous handler kept none that this one can read. The balloon's
// removed pages of such a VM are unknown, and it is served all the same —
// a VM left without a handler stalls for good — with a warning: its
// pages that the balloon removed before read the memory file's bytes, not
// zeros. A kept state of another version of the memory file than
// version, the one open now, is the state of a stale VM (see vm.stale).
func loadState(log *slog.Logger, unit uintptr, nunits int64, version string, fresh bool, kept *os.File) (*vmState, error) {
	if kept != nil {
		st, err := openVMState(kept)
		switch {
		case err != nil:
		case st.unit != unit || st.nunits != nunits && st.version == version:
			err = fmt.Errorf("the kept VM state is of %d units of %d bytes; the VM has %d of %d", st.nunits, st.unit, nunits, unit)
			st.close()
		default:
			return st, nil
		}
		log.Warn(unknownRemoved, "err", err)
	} else if !fresh {
		log.Warn(unknownRemoved, "err", "the previous handler kept no state of the VM (an older version of filemap)")
	}
	return newVMState(unit, nunits, version)
}

const unknownRemoved = "firecracker: the pages the balloon removed before this handler started are unknown: they read the memory file's bytes, not zeros"

// run serves the VM until its VMM disconnects or the server closes, then
// lets go of everything: the VMM keeps its own copy of the userfaultfd,
// so a fault after that stalls rather than reading zeros.
func (v *vm) run() {
	v.log.Info("firecracker: restoring", "memory", v.s.cfg.Name, "regions", len(v.regions),
		"page_size", v.unit, "bytes", v.guestBytes(), "record", v.rec != nil, "prefetch", v.pf != nil)
	go v.watch()
	if v.pf != nil {
		v.pf.begin()
	}
	v.serve()
	v.shutdown()
	v.ops.Wait()
	if v.pf != nil {
		v.pf.end()
	}
	attrs := []any{"faults", v.faults.Load(), "copied", v.copied.Load(), "zero_filled", v.zeroed.Load(),
		"duration", time.Since(v.start).Round(time.Millisecond)}
	if v.rec != nil {
		attrs = append(attrs, "recorded", v.rec.count())
		if err := v.rec.close(); err != nil {
			v.log.Error("firecracker: the record is incomplete", "err", err)
		}
		attrs = append(attrs, "record", v.s.cfg.Record)
	}
	if v.pf != nil {
		attrs = append(attrs, v.pf.summary()...)
	}
	v.log.Info("firecracker: VM gone", attrs...)
	v.u.Close()
	unix.Close(v.efd)
	v.conn.Close()
	v.st.close()
}

func (v *vm) guestBytes() uintptr {
	var n uintptr
	for _, r := range v.regions {
		n += r.Size
	}
	return n
}

// watch waits for the VMM to disconnect. Firecracker sends nothing after
// the handshake and keeps the socket open: EOF is its exit.
func (v *vm) watch() {
	buf := make([]byte, 4096)
	warned := false
	for {
		n, err := v.conn.Read(buf)
		if n > 0 && !warned {
			warned = true
			v.log.Warn("firecracker: the VMM sent data after the handshake; ignored", "bytes", n, "data", clip(buf[:n]))
		}
		if err != nil {
			break
		}
	}
	v.shutdown()
}

// shutdown makes the loop, and the prefetch, stop.
func (v *vm) shutdown() {
	v.stopOnce.Do(func() {
		v.stopping.Store(true)
		close(v.stopped)
		v.wake()
	})
}

// wake makes the loop look at its queues.
func (v *vm) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(v.efd, one[:])
}

// The loop waits this long, doubling up to the maximum, before it retries
// faults whose copy met EAGAIN with no event left to read: the thread that
// raised the event has not resumed yet.
const (
	deferWaitMin = 50 * time.Microsecond
	deferWaitMax = 10 * time.Millisecond
)

// serve is the VM's loop. It reads every pending message, applies the
// REMOVEs among them, retries the deferred faults and then handles the new
// ones; only when no message is pending does it install a batch of the
// prefetch, so the guest's own faults always go first.
func (v *vm) serve() {
	msgs := make([]uffd.Msg, stateSlots)
	wait := deferWaitMin
	for !v.stopping.Load() {
		n, err := v.readBatch(msgs)
		if err != nil {
			v.log.Error("firecracker: cannot read the userfaultfd; no longer serving this VM", "err", err)
			return
		}
		for _, a := range v.takeDeferred() {
			v.fault(a, false)
		}
		for i := range msgs[:n] {
			if msgs[i].Event == uffd.EventPagefault {
				v.fault(uintptr(msgs[i].Address), true)
			}
		}
		if n > 0 {
			continue
		}
		if v.hasDeferred() {
			if _, err := v.poll(wait); err != nil {
				v.log.Error("firecracker: cannot poll the userfaultfd; no longer serving this VM", "err", err)
				return
			}
			wait = min(2*wait, deferWaitMax)
			continue
		}
		wait = deferWaitMin
		if v.pf != nil && v.pf.installNext() {
			continue
		}
		if err := v.idle(); err != nil {
			v.log.Error("firecracker: cannot poll the userfaultfd; no longer serving this VM", "err", err)
			return
		}
	}
}

// readBatch reads the pending messages, into the state's buffer (see
// vmState), decodes them into msgs and applies their REMOVEs, under mu for
// writing (see vm.mu).
func (v *vm) readBatch(msgs []uffd.Msg) (int, error) {
	v.mu.Lock()
	n, err := v.st.read(v.u.Fd())
	var bad []error
	for i := range msgs[:n] {
		var derr error
		if msgs[i], derr = v.st.msg(i); derr != nil {
			bad = append(bad, derr)
			continue
		}
		switch m := &msgs[i]; m.Event {
		case uffd.EventPagefault:
		case uffd.EventRemove:
			v.removeLocked(uintptr(m.Start), uintptr(m.End))
		case uffd.EventFork:
			unix.Close(m.UFD) // installed in our table by the read: ours to close
			v.log.Warn("firecracker: unexpected fork event (the VMM asked for UFFD_FEATURE_EVENT_FORK); the child is not served")
		default:
			v.log.Warn("firecracker: unexpected userfaultfd event; ignored", "event", m.String())
		}
	}
	v.mu.Unlock()
	if len(bad) > 0 {
		v.log.Warn("firecracker: userfaultfd message not understood", "err", errors.Join(bad...))
	}
	if err != nil {
		if n == 0 {
			return 0, err
		}
		v.log.Warn("firecracker: cannot read the userfaultfd; retrying", "err", err)
	}
	return n, nil
}

// replayRemoves applies the REMOVE events in the read buffer of a state a
// previous handler kept: it may have died between reading them and
// applying them (see vmState). Called before the VM's loop starts.
func (v *vm) replayRemoves() {
	for i := range stateSlots {
		if m, err := v.st.msg(i); err == nil && m.Event == uffd.EventRemove {
			v.markRemoved(uintptr(m.Start), uintptr(m.End))
		}
	}
}

// idle waits for a message or a wake-up, polling for Config.Spin first.
func (v *vm) idle() error {
	if spin := v.s.cfg.Spin; spin > 0 {
		deadline := time.Now().Add(spin)
		for time.Now().Before(deadline) {
			if ready, err := v.poll(0); ready || err != nil {
				return err
			}
		}
	}
	_, err := v.poll(-1)
	return err
}

// poll waits up to timeout (forever if negative) for a message on the
// userfaultfd or a wake-up on the eventfd, which it consumes.
func (v *vm) poll(timeout time.Duration) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(v.u.Fd()), Events: unix.POLLIN}, {Fd: int32(v.efd), Events: unix.POLLIN}}
	var ts *unix.Timespec
	if timeout >= 0 {
		t := unix.NsecToTimespec(int64(timeout))
		ts = &t
	}
	n, err := unix.Ppoll(fds, ts, nil)
	if err != nil && err != unix.EINTR {
		return false, fmt.Errorf("ppoll: %w", err)
	}
	if fds[1].Revents&unix.POLLIN != 0 {
		var b [8]byte
		unix.Read(v.efd, b[:])
	}
	if re := fds[0].Revents; re&(unix.POLLERR|unix.POLLNVAL) != 0 {
		// A userfaultfd polls as an error until its UFFDIO_API.
		return false, fmt.Errorf("the userfaultfd polls as an error (revents %#x): did the VMM do UFFDIO_API?", re)
	}
	return n > 0, nil
}

// removeLocked applies UFFD_EVENT_REMOVE [start, end). Called with mu held for
// writing.
func (v *vm) removeLocked(start, end uintptr) {
	v.s.n.removes.Add(1)
	v.markRemoved(start, end)
}

// markRemoved makes the pages wholly inside [start, end) read as zeros from
// now on. (MADV_DONTNEED zaps whole pages; hugetlbfs rounds the range to
// whole huge pages.) The bit is never cleared: the memory file's bytes of
// a removed page are the guest's no more.
func (v *vm) markRemoved(start, end uintptr) {
	for _, r := range v.regions {
		lo, hi := max(start, r.Base), min(end, r.Base+r.Size)
		if lo >= hi {
			continue
		}
		first := r.first + int64((lo-r.Base+r.PageSize-1)/r.PageSize)
		last := r.first + int64((hi-r.Base)/r.PageSize)
		for i := first; i < last; i++ {
			v.removed.set(i)
			v.installed.clear(i)
		}
	}
}

func (v *vm) regionAt(addr uintptr) *vmRegion {
	for _, r := range v.regions {
		if addr >= r.Base && addr-r.Base < r.Size {
			return r
		}
	}
	return nil
}

// fault handles the fault message of a guest at addr; first is false for a
// deferred fault being retried. It never waits for I/O: a page not in the
// cache is read and copied in by a worker.
func (v *vm) fault(addr uintptr, first bool) {
	r := v.regionAt(addr)
	if r == nil {
		// Memory the VMM registered but the handshake did not describe:
		// there is nothing to fill it with. Waking would only have the
		// access fault again, forever; it stays blocked, as it would
		// with no handler, and is logged once.
		if !v.strayLogged.Swap(true) {
			v.log.Error("firecracker: a fault outside every region of the handshake; the faulting thread stays blocked",
				"addr", fmt.Sprintf("%#x", addr))
		}
		return
	}
	unit := addr &^ (v.unit - 1)
	idx := r.first + int64((unit-r.Base)/v.unit)
	if first && v.isBusy(idx) {
		// A duplicate (see busy). Never a deferred retry: the worker that
		// deferred it may not have cleared its mark yet, and dropping the
		// retry would strand the faulter.
		return
	}
	start := time.Now()
	if first {
		v.faults.Add(1)
		v.s.n.faults.Add(1)
		if v.rec != nil {
			v.rec.add(idx)
		}
		if v.pf != nil {
			v.pf.demand(idx)
		}
	}
	if v.removed.get(idx) {
		v.zero(unit, idx, start)
		return
	}
	if v.stale {
		v.poison(unit, idx)
		return
	}
	if v.installed.get(idx) && v.cacheState(idx) != pagecache.Uptodate {
		// Copied in already (a duplicate message, or a page the prefetch or
		// a neighbour's copy-around installed) and since evicted from the
		// cache: reading it again only to find it present would be a
		// waste, so wake. Should the access fault again, the page was
		// dropped without a REMOVE event, and the next fault reads it.
		v.installed.clear(idx)
		if err := v.u.Wake(unit, v.unit); err != nil && !gone(err) {
			v.log.Warn("firecracker: UFFDIO_WAKE failed", "addr", fmt.Sprintf("%#x", unit), "err", err)
		}
		return
	}
	if v.unit == PageSize {
		// The fault path: lookup, the page lock, read-around with its
		// markers, retries. It resolves an uptodate page at once and
		// hands anything else to spawn.
		spawned := false
		v.s.faults.Fault(r.fr, unit, func(resolve func()) {
			spawned = true
			v.worker(idx, func() {
				resolve()
				v.install(r, unit, idx, start, "major", false)
			})
		})
		if !spawned {
			v.install(r, unit, idx, start, "minor", true)
		}
		return
	}
	if v.obj.file.Cache.CountUptodate(idx*v.upages, (idx+1)*v.upages) == v.upages {
		v.s.counters.Minor.Add(1)
		v.install(r, unit, idx, start, "minor", true)
		return
	}
	v.worker(idx, func() {
		if v.fillHuge(r, idx) {
			v.s.counters.Major.Add(1)
		} else {
			v.s.counters.Minor.Add(1)
		}
		v.install(r, unit, idx, start, "major", false)
	})
}

// worker runs f, the fill and copy of unit idx, in a goroutine of its
// own, with idx marked busy until f is done.
func (v *vm) worker(idx int64, f func()) {
	v.deferMu.Lock()
	v.busy[idx] = struct{}{}
	v.deferMu.Unlock()
	v.ops.Add(1)
	go func() {
		defer v.ops.Done()
		defer func() {
			v.deferMu.Lock()
			delete(v.busy, idx)
			v.deferMu.Unlock()
		}()
		f()
	}()
}

func (v *vm) isBusy(idx int64) bool {
	v.deferMu.Lock()
	defer v.deferMu.Unlock()
	_, ok := v.busy[idx]
	return ok
}

// fillHuge makes the 4 KiB pages of huge unit idx uptodate in the cache:
// all of them are read at once, in the background, then waited for; a page
// whose read failed is read again alone by the fault path, with retries.
// It reports whether it had anything to read.
func (v *vm) fillHuge(r *vmRegion, idx int64) bool {
	cache := v.obj.file.Cache
	lo, hi := idx*v.upages, (idx+1)*v.upages
	if cache.CountUptodate(lo, hi) == hi-lo {
		return false
	}
	v.s.faults.WillNeed(&v.obj.file, lo, hi)
	for p := lo; p < hi; p++ {
		for try := 0; try < maxRefills; try++ {
			s, f := cache.Lookup(p)
			if s == pagecache.Uptodate {
				break
			}
			if s == pagecache.InFlight {
				v.s.faults.WaitFill(&v.obj.file, f) // a guest waits: ahead of the readahead it started
				continue
			}
			v.s.faults.Fault(r.fr, r.Base+uintptr(p*PageSize-r.Offset), func(resolve func()) { resolve() })
			if s, _ := cache.Lookup(p); s == pagecache.Error {
				return true // install finds it so, and poisons the guest's page
			}
		}
	}
	return true
}

// maxRefills bounds the reads of one page for one fault when it keeps
// being evicted before its copy: a cache budget far too small.
const maxRefills = 8

// errRemoved is a copy not made because a REMOVE covered the page first.
var errRemoved = errors.New("removed by the balloon")

// install copies the unit at guest address unit (index idx) from the cache
// into the guest and wakes its faulters. inLoop says the caller is the
// loop, which must not wait for I/O: a page found evicted is read again by
// a worker. kind labels the fault's latency: major, minor.
func (v *vm) install(r *vmRegion, unit uintptr, idx int64, start time.Time, kind string, inLoop bool) {
	for try := 0; ; try++ {
		switch v.cacheState(idx) {
		case pagecache.Uptodate:
			fresh, err := v.copyIn(unit, idx)
			switch {
			case err == nil:
				if fresh {
					v.copied.Add(1)
					v.s.n.copied.Add(1)
				}
				v.s.metrics.Fault(kind, time.Since(start))
				v.copyAround(r, idx)
				return
			case errors.Is(err, errRemoved):
				v.zero(unit, idx, start)
				return
			case errors.Is(err, unix.EAGAIN):
				v.deferFault(unit)
				return
			case errors.Is(err, unix.EFAULT):
				// The guard: the page was evicted between the lookup and
				// the copy. Read it again.
				v.s.n.refill.Add(1)
			case gone(err):
				return
			default:
				v.log.Error("firecracker: cannot copy a page into the guest", "addr", fmt.Sprintf("%#x", unit),
					"offset", idx*int64(v.unit), "err", err)
				return
			}
		case pagecache.Error:
			v.poison(unit, idx)
			return
		}
		if try >= maxRefills {
			v.log.Error("firecracker: a page keeps being evicted before it is copied; retrying later (is --cache-size too small?)",
				"offset", idx*int64(v.unit))
			v.deferFault(unit)
			return
		}
		if inLoop {
			v.worker(idx, func() { v.install(r, unit, idx, start, "major", false) })
			return
		}
		if v.unit == PageSize {
			v.s.faults.Fault(r.fr, unit, func(resolve func()) { resolve() })
		} else {
			v.fillHuge(r, idx)
		}
	}
}

// cacheState is the state of unit idx's pages in the cache: Uptodate if
// all are, Error if a read of one failed, else Absent.
func (v *vm) cacheState(idx int64) pagecache.State {
	cache := v.obj.file.Cache
	lo, hi := idx*v.upages, (idx+1)*v.upages
	if v.upages == 1 {
		switch s, _ := cache.Lookup(lo); s {
		case pagecache.Uptodate, pagecache.Error:
			return s
		}
		return pagecache.Absent
	}
	if cache.CountUptodate(lo, hi) == hi-lo {
		return pagecache.Uptodate
	}
	for p := lo; p < hi; p++ {
		if s, _ := cache.Lookup(p); s == pagecache.Error {
			return s
		}
	}
	return pagecache.Absent
}

// copyIn copies unit idx from the handler's view of the cache into the
// guest at unit and wakes the faulters there; an existing page is only
// woken (a duplicate message: a signal re-ran the faulting access). fresh
// says the page was not known to be in the guest already. See vm.mu for
// the lock.
func (v *vm) copyIn(unit uintptr, idx int64) (fresh bool, err error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.removed.get(idx) {
		return false, errRemoved
	}
	fresh = !v.installed.get(idx)
	src := uintptr(v.obj.view) + uintptr(idx)*v.unit
	if v.unit == PageSize {
		_, err = v.u.Copy(unit, src, PageSize, 0)
	} else {
		_, err = v.u.CopyHuge(unit, src, v.unit, v.unit, 0)
	}
	if err == nil {
		v.installed.set(idx)
	}
	return fresh, err
}

// copyAround copies the neighbours of unit idx in its aligned block of
// Config.CopyAround pages that are in the cache and not yet in the guest,
// without waking anyone: their faulters, if any, are woken when their own
// message is handled. 4 KiB pages only.
func (v *vm) copyAround(r *vmRegion, idx int64) {
	n := v.s.cfg.CopyAround
	if n <= 1 || v.unit != PageSize {
		return
	}
	lo, hi := max(idx&^(n-1), r.first), min(idx&^(n-1)+n, r.end)
	cache := v.obj.file.Cache
	want := func(i int64) bool {
		if i == idx || v.installed.get(i) || v.removed.get(i) {
			return false
		}
		s, _ := cache.Lookup(i)
		return s == pagecache.Uptodate
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	for i := lo; i < hi; {
		if !want(i) {
			i++
			continue
		}
		j := i + 1
		for j < hi && want(j) {
			j++
		}
		done, err := v.u.Copy(r.addr(i), uintptr(v.obj.view)+uintptr(i)*PageSize, uintptr(j-i)*PageSize, uffd.CopyModeDontWake)
		k := int64(done / PageSize)
		for x := i; x < i+k; x++ {
			v.installed.set(x)
		}
		v.s.n.around.Add(uint64(k))
		if err != nil {
			return // EAGAIN, EFAULT: these pages are left to their own faults
		}
		i = j
	}
}

// zero resolves a fault on removed memory with zeros: the shared zero page
// for 4 KiB pages, a copy of zeros for huge ones (hugetlbfs has no zero
// page).
func (v *vm) zero(unit uintptr, idx int64, start time.Time) {
	var err error
	if v.unit == PageSize {
		_, err = v.u.ZeroPage(unit, PageSize, 0)
		if errors.Is(err, unix.EEXIST) {
			// The guest wrote the page since (a write fault on the zero
			// page is the kernel's own copy-on-write): only wake.
			err = v.u.Wake(unit, PageSize)
		}
	} else {
		_, err = v.u.CopyHuge(unit, uintptr(v.s.zeros), v.unit, v.unit, 0)
	}
	switch {
	case err == nil:
		v.zeroed.Add(1)
		v.s.n.zeroed.Add(1)
		v.s.metrics.Fault("zero", time.Since(start))
	case errors.Is(err, unix.EAGAIN):
		v.deferFault(unit)
	case !gone(err):
		v.log.Error("firecracker: cannot zero-fill a removed page", "addr", fmt.Sprintf("%#x", unit), "err", err)
	}
}

// poison makes the guest's access to unit get SIGBUS: its bytes could not
// be read from the memory file (the fault path logged why), or the VM is
// stale.
func (v *vm) poison(unit uintptr, idx int64) {
	_, err := v.u.Poison(unit, v.unit, 0)
	if errors.Is(err, unix.EEXIST) {
		err = v.u.Wake(unit, v.unit) // poisoned already, or in the guest: a duplicate message
	}
	switch {
	case err == nil && v.stale:
		v.s.counters.Sigbus.Add(1)
		v.log.Error("firecracker: the memory file changed since this VM was restored: SIGBUS for the guest page",
			"addr", fmt.Sprintf("%#x", unit), "offset", idx*int64(v.unit))
	case err == nil:
		if v.unit != PageSize {
			v.s.counters.Sigbus.Add(1) // the fault path counted the 4 KiB ones
		}
		v.log.Error("firecracker: the memory file cannot be read: SIGBUS for the guest page",
			"addr", fmt.Sprintf("%#x", unit), "offset", idx*int64(v.unit))
	case errors.Is(err, unix.EAGAIN):
		v.deferFault(unit)
	case !gone(err):
		v.log.Error("firecracker: UFFDIO_POISON failed", "addr", fmt.Sprintf("%#x", unit), "err", err)
	}
}

// deferFault queues a fault whose ioctl met EAGAIN (an event is unread, or
// its raiser has not resumed) for the loop to retry, once per address, and
// wakes the loop so that it is never stranded.
func (v *vm) deferFault(unit uintptr) {
	v.s.n.deferred.Add(1)
	v.deferMu.Lock()
	if _, ok := v.deferSet[unit]; !ok {
		v.deferSet[unit] = struct{}{}
		v.deferred = append(v.deferred, unit)
	}
	v.deferMu.Unlock()
	v.wake()
}

func (v *vm) takeDeferred() []uintptr {
	v.deferMu.Lock()
	defer v.deferMu.Unlock()
	d := v.deferred
	if len(d) == 0 {
		return nil
	}
	v.deferred = nil
	clear(v.deferSet)
	return d
}

func (v *vm) hasDeferred() bool {
	v.deferMu.Lock()
	defer v.deferMu.Unlock()
	return len(v.deferred) > 0
}

// gone reports an error that means the guest's memory is no more: the VMM
// exited (ESRCH) or unmapped it (ENOENT).
func gone(err error) bool {
	return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
}
