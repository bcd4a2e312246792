package pagecache

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// HugePages is the number of pages in a huge folio the cache can hold: one
// PMD of x86-64 and of arm64 with 4 KiB pages, HugeSize bytes.
const (
	HugePages = 512
	HugeSize  = HugePages * PageSize
)

// collapseQueue bounds the extents waiting for the collapser. An extent
// turned away is counted (CollapseStats.Dropped) and stays in 4 KiB pages.
const collapseQueue = 4096

// MADV_COLLAPSE fails with EAGAIN while a page of the extent is locked or
// has a passing reference: a client faulting it in, a pread copying it,
// compaction migrating it (which the huge folio's own allocation may
// start). Right after a fill, whose waiters run onto the pages just
// written, that is common, so an extent is tried again after collapseRetry,
// then twice and four times that; after collapseTries attempts it stays in
// 4 KiB pages. Other errors are not retried.
const (
	collapseTries = 4
	collapseRetry = 20 * time.Millisecond
)

// collapseSettle is how long an extent waits after the fill that made it
// whole before it is collapsed. collapse_file holds the extent's 512 pages
// locked while it copies them into the new folio, which on this VM may be
// memory the host must fault in first (milliseconds): collapsing at once
// would stall the reader that the fill just woke, which is reading that
// very extent. A sequential reader is far ahead 100 ms later (measured:
// a cold 1 GiB read took 1.3–2× longer with immediate collapses).
const collapseSettle = 100 * time.Millisecond

// collapseIdle is how long the backing must have had no fill in flight
// before any collapse runs, as khugepaged works in the background rather
// than in the path of the faults. On this VM a collapse allocates memory
// the host must fault back in, and collapses run beside a sequential
// reader made its cold read 1.3–2× slower even 100 ms behind it: the cold
// read is the one a user waits for, the warm mappings after it are the
// ones that gain. A collapse's lru_add_drain_all and its locked extent
// also stall the fills' writes, which queue on the file's lock: a remote
// object's scan, whose fills arrive in bursts, ran 3x slower.
const collapseIdle = 250 * time.Millisecond

// Backing is where a daemon's caches live: memfds, or files on a private
// tmpfs whose fully read 2 MiB extents become huge folios (mm/shmem.c with
// huge=advise, and mm/khugepaged.c's collapse_file through MADV_COLLAPSE).
// Make one per daemon; it owns the mount and the collapser goroutine.
//
// Why a tmpfs of our own: the kernel maps a huge folio of the page cache
// with one PMD per fault, where 4 KiB pages take one fault per 16 (fault-
// around). memfds live on the kernel's internal shm mount, which follows
// shmem_enabled (never, here) and refuses MADV_COLLAPSE. A tmpfs mounted
// with huge=advise keeps write(2) page-granular — a write has no VMA, so no
// MADV_HUGEPAGE to follow — which the cache needs: a 4 KiB write that
// allocated a 2 MiB folio would make the pages around it read as zeros with
// no MISSING fault. The mount is detached (fsopen, fsmount, no move_mount):
// it has no path, and nothing outside this process changes.
type Backing struct {
	mnt    int    // the detached tmpfs mount, or -1 for memfds
	reason string // what the backing is, and why
	col    *collapser

	closeOnce sync.Once
}

// NewBacking makes the backing of a daemon's caches. With huge set it
// tries a private tmpfs and checks, on a 2 MiB probe file, that a 4 KiB
// write stays 4 KiB and that MADV_COLLAPSE works; if anything fails the
// caches are memfds, and Reason says why. It never fails.
func NewBacking(huge bool) *Backing {
	if !huge {
		return memfdBacking("huge folios turned off")
	}
	mnt, err := mountTmpfs()
	if err != nil {
		return memfdBacking(fmt.Sprintf("no private tmpfs (%v; it needs CAP_SYS_ADMIN and fsopen(2))", err))
	}
	if err := probeHuge(mnt); err != nil {
		unix.Close(mnt)
		return memfdBacking(err.Error())
	}
	b := &Backing{mnt: mnt, col: newCollapser(),
		reason: "private tmpfs (huge=advise): fills are 4 KiB pages, and every 2 MiB extent read whole becomes one huge folio"}
	for range b.col.workers {
		go b.col.run()
	}
	return b
}

func memfdBacking(why string) *Backing {
	return &Backing{mnt: -1, reason: "memfd, 4 KiB pages: " + why}
}

// Huge reports whether caches made here collapse into huge folios.
func (b *Backing) Huge() bool { return b.col != nil }

// Reason says which backing is in use and why, in one line for a log.
func (b *Backing) Reason() string { return b.reason }

// Close stops the collapser and lets go of the mount. Caches made here
// keep working (each file holds the mount), but no longer collapse.
func (b *Backing) Close() error {
	if b.col == nil {
		return nil
	}
	b.closeOnce.Do(func() {
		b.col.close()
		unix.Close(b.mnt)
	})
	return nil
}

// CollapseStats counts the collapser's work.
type CollapseStats struct {
	Collapsed uint64 // extents that became one huge folio
	Retried   uint64 // attempts that failed with EAGAIN and were tried again later
	Failed    uint64 // extents left in 4 KiB pages by MADV_COLLAPSE errors (ENOMEM, EINVAL, EAGAIN every time)
	Skipped   uint64 // extents no longer whole, or of a closed cache, when their turn came
	Dropped   uint64 // extents turned away by a full queue
	Pending   int64  // extents waiting for or in a collapse now
	LastError error  // of the last failed collapse, naming its cache and offset
}

// CollapseStats returns the collapser's counters.
func (b *Backing) CollapseStats() CollapseStats {
	if b.col == nil {
		return CollapseStats{}
	}
	c := b.col
	st := CollapseStats{Collapsed: c.collapsed.Load(), Retried: c.retried.Load(), Failed: c.failed.Load(),
		Skipped: c.skipped.Load(), Dropped: c.dropped.Load()}
	if err, ok := c.lastErr.Load().(error); ok {
		st.LastError = err
	}
	c.mu.Lock()
	st.Pending = int64(c.pending)
	c.mu.Unlock()
	return st
}

// WaitCollapses blocks until no extent waits for or is in a collapse. Tests
// use it to look at the cache once the background work is done.
func (b *Backing) WaitCollapses() {
	if b.col != nil {
		b.col.wait()
	}
}

// New makes the cache of an object of size bytes in this backing.
func (b *Backing) New(name string, size int64) (*Cache, error) {
	if b.col == nil {
		return New(name, size)
	}
	if size < 0 {
		return nil, fmt.Errorf("pagecache %s: negative size %d", name, size)
	}
	// A tmpfs file cannot be sealed as the memfds are: F_ADD_SEALS works
	// only on a memfd made with MFD_ALLOW_SEALING (every other shmem inode
	// is born F_SEAL_SEAL). It needs no seal. Changing its size or bytes
	// takes a writable fd, and clients get O_RDONLY ones (ftruncate fails).
	// The file has no path: O_TMPFILE on a mount with none, and linkat(2)
	// cannot take it across mounts (EXDEV). Through /proc/self/fd, mode
	// 0400 refuses reopening for writing and truncate(2) to all but
	// CAP_DAC_OVERRIDE, and only the owner — the daemon's uid, root as it
	// needs to mount — may chmod it. Tried as uid 65534: EACCES, EACCES,
	// EPERM, EXDEV. A root client could truncate it; a memfd's seals would
	// stop even that one.
	fd, err := unix.Openat(b.mnt, ".", unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o400)
	if err != nil {
		return nil, fmt.Errorf("pagecache %s: create a file on the private tmpfs: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "tmpfs:"+name)
	o, err := newCache(name, size, f)
	if err != nil {
		return nil, err
	}
	if err := o.mapView(b.col); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

// mountTmpfs makes the private tmpfs and returns its mount fd. size=0 and
// nr_inodes=0 mean no limit of tmpfs's own (its default is half of RAM):
// reclaim's budget bounds what the caches hold, and only this process can
// reach the mount. huge=advise lets a VMA with MADV_HUGEPAGE, or
// MADV_COLLAPSE, make huge folios, and nothing else.
func mountTmpfs() (int, error) {
	fs, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsopen tmpfs: %w", err)
	}
	defer unix.Close(fs)
	for _, kv := range [][2]string{{"huge", "advise"}, {"size", "0"}, {"nr_inodes", "0"}, {"mode", "0700"}} {
		if err := unix.FsconfigSetString(fs, kv[0], kv[1]); err != nil {
			return -1, fmt.Errorf("tmpfs option %s=%s: %w", kv[0], kv[1], err)
		}
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return -1, fmt.Errorf("create tmpfs: %w", err)
	}
	mnt, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return -1, fmt.Errorf("fsmount tmpfs: %w", err)
	}
	return mnt, nil
}

// probeHuge checks on a 2 MiB file of the mount what the cache relies on:
// the PMD is HugeSize, a 4 KiB write allocates 4 KiB, and a whole extent
// collapses. The first collapse of a VM can take milliseconds while the
// host faults memory in; better here than on a client's first cache.
func probeHuge(mnt int) error {
	if b, err := os.ReadFile(THPSysfs + "/hpage_pmd_size"); err == nil {
		if n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); n != HugeSize {
			return fmt.Errorf("the PMD maps %d bytes, not %d", n, HugeSize)
		}
	}
	fd, err := unix.Openat(mnt, ".", unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o400)
	if err != nil {
		return fmt.Errorf("probe file on the private tmpfs: %w", err)
	}
	f := os.NewFile(uintptr(fd), "tmpfs:probe")
	defer f.Close()
	if err := unix.Ftruncate(fd, HugeSize); err != nil {
		return fmt.Errorf("probe file: ftruncate: %w", err)
	}
	page := make([]byte, PageSize)
	if _, err := unix.Pwrite(fd, page, 0); err != nil {
		return fmt.Errorf("probe file: pwrite: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("probe file: fstat: %w", err)
	}
	if st.Blocks*512 != PageSize {
		return fmt.Errorf("a %d-byte write into the private tmpfs allocated %d bytes: it would hand clients zeros", PageSize, st.Blocks*512)
	}
	rest := make([]byte, HugeSize-PageSize)
	if _, err := unix.Pwrite(fd, rest, PageSize); err != nil {
		return fmt.Errorf("probe file: pwrite: %w", err)
	}
	view, err := mapAligned(fd, HugeSize)
	if err != nil {
		return fmt.Errorf("probe file: %w", err)
	}
	defer unix.MunmapPtr(view, HugeSize)
	err = madviseCollapse(view)
	for try := 1; errors.Is(err, unix.EAGAIN) && try < collapseTries; try++ {
		time.Sleep(collapseRetry << (try - 1))
		err = madviseCollapse(view)
	}
	if err != nil {
		return fmt.Errorf("MADV_COLLAPSE on the private tmpfs: %w", err)
	}
	return nil
}

// mapAligned maps length bytes of fd from offset 0 shared and read-only, at
// a HugeSize-aligned address, so that each extent's virtual address and file
// offset agree modulo HugeSize, as a PMD needs: it reserves length+HugeSize
// of address space, maps the file over the aligned part, and gives the rest
// back.
func mapAligned(fd int, length uintptr) (unsafe.Pointer, error) {
	res, err := unix.MmapPtr(-1, 0, nil, length+HugeSize, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("reserve %d bytes of address space: %w", length+HugeSize, err)
	}
	head := (HugeSize - uintptr(res)%HugeSize) % HugeSize
	at := unsafe.Add(res, head)
	view, err := unix.MmapPtr(fd, 0, at, length, unix.PROT_READ, unix.MAP_SHARED|unix.MAP_FIXED)
	if err != nil {
		unix.MunmapPtr(res, length+HugeSize)
		return nil, fmt.Errorf("map %d bytes of the cache file: %w", length, err)
	}
	if head > 0 {
		unix.MunmapPtr(res, head)
	}
	if tail := HugeSize - head; tail > 0 {
		unix.MunmapPtr(unsafe.Add(view, length), tail)
	}
	// The view is never touched; keep a cache of up to terabytes out of
	// core dumps all the same.
	unix.Madvise(unsafe.Slice((*byte)(view), length), unix.MADV_DONTDUMP)
	return view, nil
}

// madviseCollapse collapses the HugeSize bytes at p into one huge folio.
func madviseCollapse(p unsafe.Pointer) error {
	return unix.Madvise(unsafe.Slice((*byte)(p), HugeSize), unix.MADV_COLLAPSE)
}

// collapser is the daemon's khugepaged: a goroutine per CPU, two at most,
// that collapse the extents End found whole, off the fault path. Their
// threads run at the lowest priority: a collapse copies 2 MiB, and a fault
// that waits for a read must not wait behind it for a CPU. Two, because
// most of a collapse can be the allocation of its huge folio: on a VM with
// free page reporting, the host faults in 2 MiB it had taken back (0.4 ms
// a collapse here when memory was recently freed, 4–8 ms when not), and
// two vCPUs wait for that in parallel (256 extents: 1.07 s with one, 0.64 s
// with two).
type collapser struct {
	jobs    chan collapseJob
	stop    chan struct{}
	workers int
	running sync.WaitGroup

	mu      sync.Mutex // protects the fields below
	pending int        // queued or running
	stopped bool       // close was called: enqueue turns everything away
	idle    sync.Cond

	lastBusy atomic.Int64 // when a fill last started or ended, in UnixNano
	fills    atomic.Int64 // fills in flight in every cache of the backing

	collapsed, retried, failed, skipped, dropped atomic.Uint64
	lastErr                                      atomic.Value // error
}

type collapseJob struct {
	o     *Cache
	x     int64
	at    time.Time // not before
	tries int       // attempts made
}

func newCollapser() *collapser {
	c := &collapser{jobs: make(chan collapseJob, collapseQueue), stop: make(chan struct{}),
		workers: min(runtime.NumCPU(), 2)}
	c.idle.L = &c.mu
	c.running.Add(c.workers)
	return c
}

// enqueue asks for extent x of o to be collapsed. It never blocks: with the
// queue full it reports false, and the extent stays in 4 KiB pages.
func (c *collapser) enqueue(o *Cache, x int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return false
	}
	select {
	case c.jobs <- collapseJob{o: o, x: x, at: time.Now().Add(collapseSettle)}:
		c.pending++
		return true
	default:
		c.dropped.Add(1)
		return false
	}
}

// retry puts j back in the queue after a delay. It stays pending meanwhile,
// and its extent stays marked queued.
func (c *collapser) retry(j collapseJob) {
	c.retried.Add(1)
	time.AfterFunc(collapseRetry<<(j.tries-1), func() {
		c.mu.Lock()
		if !c.stopped {
			select {
			case c.jobs <- j:
				c.mu.Unlock()
				return
			default:
				c.dropped.Add(1)
			}
		}
		c.mu.Unlock()
		// Not under c.mu: End takes the cache's lock, then c.mu.
		j.o.unqueue(j.x)
		c.mu.Lock()
		c.pending = max(c.pending-1, 0)
		c.idle.Broadcast()
		c.mu.Unlock()
	})
}

func (c *collapser) run() {
	defer c.running.Done()
	// The thread dies with the goroutine (it stays locked), so its nice
	// value never reaches other goroutines.
	runtime.LockOSThread()
	unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
	for {
		select {
		case <-c.stop:
			return
		case j := <-c.jobs:
			if !c.sleep(time.Until(j.at)) || !c.waitIdle() {
				return
			}
			j.tries++
			again := j.tries < collapseTries
			switch err := j.o.collapse(j.x, again); {
			case again && errors.Is(err, unix.EAGAIN):
				c.retry(j)
				continue
			case errors.Is(err, errSkip):
				c.skipped.Add(1)
			case err != nil:
				c.failed.Add(1)
				c.lastErr.Store(err)
			default:
				c.collapsed.Add(1)
			}
			c.mu.Lock()
			c.pending = max(c.pending-1, 0)
			c.idle.Broadcast()
			c.mu.Unlock()
		}
	}
}

// sleep waits for d, or reports false if the collapser is stopped first.
func (c *collapser) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.stop:
		return false
	case <-t.C:
		return true
	}
}

func (c *collapser) fillStarted() {
	c.fills.Add(1)
	c.lastBusy.Store(time.Now().UnixNano())
}

func (c *collapser) fillEnded() {
	c.fills.Add(-1)
	c.lastBusy.Store(time.Now().UnixNano())
}

// waitIdle waits until no fill has been in flight for collapseIdle.
func (c *collapser) waitIdle() bool {
	for {
		idle := time.Since(time.Unix(0, c.lastBusy.Load()))
		if c.fills.Load() == 0 && idle >= collapseIdle {
			return true
		}
		if !c.sleep(max(collapseIdle-idle, 10*time.Millisecond)) {
			return false
		}
	}
}

func (c *collapser) wait() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.pending > 0 {
		c.idle.Wait()
	}
}

// close stops the goroutine; extents still queued stay in 4 KiB pages.
func (c *collapser) close() {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.stopped = true
	c.mu.Unlock()
	close(c.stop)
	c.running.Wait()
	c.mu.Lock()
	c.pending = 0
	c.idle.Broadcast()
	c.mu.Unlock()
}
