// Package pagecache is filemap's address_space: the pages of one object read
// so far, held in a file of shmem (mm/shmem.c) that clients map — a memfd,
// or a file on the daemon's private tmpfs (see Backing) — with a page-state
// table (absent, in flight, uptodate, error) and the page lock.
//
// The cache file is the page cache the kernel sees. A page written into it
// with a whole-page pwrite is mapped by every client's next access with no
// message to the handler; a hole raises a MISSING fault. In-flight fills play
// the part of PG_locked: a fault on a page that is being read waits for that
// read and never starts another. On a huge backing, a 2 MiB extent whose
// pages are all uptodate is collapsed into one huge folio in the background,
// as khugepaged would (mm/khugepaged.c), so that a client maps it with one
// PMD per fault; a punch drops such an extent whole.
//
// Lock order: Cache.mu is taken under reclaim.Budget.mu (eviction punches
// with the budget's lock held) and before fault.Region.raMu (Begin's
// window callback) and the collapser's mu; a cache file's write lock is
// never held with it. The whole order is in package server's
// documentation.
package pagecache

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PageSize is the unit of the cache: the base page of x86-64 and arm64 4K.
const PageSize = 4096

// State is what the cache knows of one page.
type State uint8

const (
	Absent   State = iota // a hole in the cache file
	InFlight              // claimed by a fill that has not finished
	Uptodate              // in the cache file, whole
	Error                 // the last read failed; the next fault reads again

	// Marker is a page held back from the cache file: its bytes wait in memory
	// and its touch faults, which tells readahead the reader got there.
	// The table stores it as Absent; the markers map holds its bytes.
	Marker
)

// MaxMarkers bounds the pages an object holds back: one per sequential
// stream is enough, and each costs a page of memory.
const MaxMarkers = 256

func (s State) String() string {
	switch s {
	case Absent:
		return "absent"
	case InFlight:
		return "in flight"
	case Uptodate:
		return "uptodate"
	case Error:
		return "error"
	case Marker:
		return "marker"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Cache is the cache of one object.
type Cache struct {
	wlock  writeLock // serialises WritePages (writelock.go)
	name   string
	size   int64
	npages int64
	file   *os.File // the cache file: a memfd or a file on the private tmpfs

	// On a huge backing: the collapser, the number of extents that may be
	// collapsed (those wholly inside the object: size / HugeSize), and the
	// daemon's own mapping of them, shared and read-only, HugeSize-aligned,
	// never touched: MADV_COLLAPSE needs a VMA. col is nil otherwise. A
	// cache file adopted from a huge backing by one that is not has nhuge
	// set and no collapser: its huge folios must still be punched whole.
	col   *collapser
	nhuge int64
	view  unsafe.Pointer

	dev, ino uint64 // the cache file's identity, to know it when it comes back (Adopt)

	resident atomic.Int64 // pages in the cache file

	mu         sync.Mutex // protects the fields below
	states     table
	fills      []*Fill          // in flight; few at a time, so a slice is enough
	markers    map[int64][]byte // pages held back, with their bytes
	collapsing []int64          // extents in MADV_COLLAPSE, one per collapser worker at most
	collapsed  sync.Cond        // on mu: a collapse has ended
	closed     bool
}

// New makes the cache of an object of size bytes in a memfd of size rounded
// up to a page, sealed against growing and shrinking so that no client can
// truncate pages from under the others. Its pages stay 4 KiB; Backing.New
// makes caches that may hold huge folios.
func New(name string, size int64) (*Cache, error) {
	if size < 0 {
		return nil, fmt.Errorf("pagecache %s: negative size %d", name, size)
	}
	fd, err := unix.MemfdCreate("filemap:"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("pagecache %s: memfd_create: %w", name, err)
	}
	o, err := newCache(name, size, os.NewFile(uintptr(fd), "memfd:"+name))
	if err != nil {
		return nil, err
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		o.Close()
		return nil, fmt.Errorf("pagecache %s: seal memfd: %w", name, err)
	}
	// A memfd is born 0777: a client of the same uid could reopen its
	// read-only descriptor for writing through /proc and write into the
	// cache every client shares. The daemon writes through the descriptor
	// it has, which the mode does not affect.
	if err := unix.Fchmod(fd, 0o400); err != nil {
		o.Close()
		return nil, fmt.Errorf("pagecache %s: chmod memfd: %w", name, err)
	}
	return o, nil
}

// newCache makes the cache of an object of size bytes in file, which it
// sizes to whole pages and owns from now on.
func newCache(name string, size int64, file *os.File) (*Cache, error) {
	npages := (size + PageSize - 1) / PageSize
	if err := unix.Ftruncate(int(file.Fd()), npages*PageSize); err != nil {
		file.Close()
		return nil, fmt.Errorf("pagecache %s: size the cache file to %d bytes: %w", name, npages*PageSize, err)
	}
	return wrap(name, size, file)
}

// wrap makes the cache of an object of size bytes held in file, a file of
// whole pages that it owns from now on. Every page starts absent.
func wrap(name string, size int64, file *os.File) (*Cache, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(file.Fd()), &st); err != nil {
		file.Close()
		return nil, fmt.Errorf("pagecache %s: fstat the cache file: %w", name, err)
	}
	npages := (size + PageSize - 1) / PageSize
	o := &Cache{name: name, size: size, npages: npages, file: file, states: newTable(npages),
		markers: make(map[int64][]byte), dev: st.Dev, ino: st.Ino}
	o.collapsed.L = &o.mu
	return o, nil
}

// Same reports whether f is this cache's file (another descriptor of it).
func (o *Cache) Same(f *os.File) bool {
	var st unix.Stat_t
	return unix.Fstat(int(f.Fd()), &st) == nil && st.Dev == o.dev && st.Ino == o.ino
}

// mapView makes o collapse its whole extents through col: it maps them.
func (o *Cache) mapView(col *collapser) error {
	n := o.size / HugeSize
	if n == 0 {
		return nil // no extent lies wholly inside the object
	}
	view, err := mapAligned(int(o.file.Fd()), uintptr(n)*HugeSize)
	if err != nil {
		return fmt.Errorf("pagecache %s: %w", o.name, err)
	}
	o.col, o.nhuge, o.view = col, n, view
	return nil
}

// HugePages is the number of pages that may become one huge folio, which a
// punch drops whole: HugePages on a huge backing, 1 otherwise. Reclaim
// evicts such a cache by whole aligned blocks of this many pages.
func (o *Cache) HugePages() int64 {
	if o.nhuge == 0 {
		return 1
	}
	return HugePages
}

// IsHuge reports whether huge extent x (pages [x*HugePages, (x+1)*HugePages))
// is one huge folio.
func (o *Cache) IsHuge(x int64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return x >= 0 && x < o.nhuge && o.states.isHuge(x)
}

// Name is the object's name in errors and logs.
func (o *Cache) Name() string { return o.name }

// Size is the object's length in bytes.
func (o *Cache) Size() int64 { return o.size }

// NPages is the number of pages, the last one possibly partial.
func (o *Cache) NPages() int64 { return o.npages }

// Resident is the number of pages in the cache file.
func (o *Cache) Resident() int64 { return o.resident.Load() }

// AllocatedBytes is the memory the cache file holds, as the kernel counts it.
func (o *Cache) AllocatedBytes() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(o.file.Fd()), &st); err != nil {
		return 0, fmt.Errorf("pagecache %s: fstat the cache file: %w", o.name, err)
	}
	return st.Blocks * 512, nil
}

// MetadataBytes is the memory the page-state table holds.
func (o *Cache) MetadataBytes() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.states.bytes() + int64(len(o.fills))*64 + int64(len(o.markers))*(PageSize+32)
}

// File is the cache file, open for reading and writing: the daemon's own
// descriptor, for keeping it across a restart. Nobody else may write it.
func (o *Cache) File() *os.File { return o.file }

// ReadOnlyFile opens the cache file again for reading only, through /proc,
// so a client can map the cache but never write into the copy others share.
func (o *Cache) ReadOnlyFile() (*os.File, error) {
	path := fmt.Sprintf("/proc/self/fd/%d", o.file.Fd())
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("pagecache %s: reopen the cache file read-only: %w", o.name, err)
	}
	return f, nil
}

// Lookup returns the state of a page and, when it is in flight, its fill.
func (o *Cache) Lookup(page int64) (State, *Fill) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.states.get(page)
	if s == InFlight {
		return s, o.fillOfLocked(page)
	}
	if _, ok := o.markers[page]; ok {
		return Marker, nil
	}
	return s, nil
}

func (o *Cache) fillOfLocked(page int64) *Fill {
	for _, f := range o.fills {
		if f.Start <= page && page < f.End {
			return f
		}
	}
	panic(fmt.Sprintf("pagecache %s: page %d in flight without a fill", o.name, page))
}

// CountUptodate is the number of uptodate pages in [lo, hi).
func (o *Cache) CountUptodate(lo, hi int64) int64 {
	lo, hi = max(lo, 0), min(hi, o.npages)
	o.mu.Lock()
	defer o.mu.Unlock()
	var n int64
	for p := lo; p < hi; p++ {
		if o.states.get(p) == Uptodate {
			n++
		}
	}
	return n
}

// NextMiss is the kernel's page_cache_next_miss: the first page of [lo,
// hi) that is neither uptodate, nor being read, nor a marker held back;
// hi if there is none.
func (o *Cache) NextMiss(lo, hi int64) int64 {
	lo, hi = max(lo, 0), min(hi, o.npages)
	o.mu.Lock()
	defer o.mu.Unlock()
	for p := lo; p < hi; p++ {
		switch o.states.get(p) {
		case Uptodate, InFlight:
			continue
		case Absent:
			if _, ok := o.markers[p]; ok {
				continue
			}
		}
		return p
	}
	return max(hi, lo)
}

// Begin is the lookup of the fault path. For an uptodate page it returns
// (Uptodate, nil). For a page some fill is reading it returns (InFlight, that
// fill): wait for it. For a marker it returns (Marker, a one-page fill
// holding its bytes): the caller writes them and calls End. Otherwise it
// asks window for the pages the miss should read, claims the run of absent
// pages around page inside them, marks them in flight and returns (Absent,
// the new fill): the caller now owns the read and must call End. window
// runs under the cache's lock, only for a miss.
func (o *Cache) Begin(page int64, window func() (lo, hi int64)) (State, *Fill) {
	if page < 0 || page >= o.npages {
		panic(fmt.Sprintf("pagecache %s: page %d outside [0, %d)", o.name, page, o.npages))
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	switch s := o.states.get(page); s {
	case Uptodate:
		return s, nil
	case InFlight:
		return s, o.fillOfLocked(page)
	}
	if held, ok := o.markers[page]; ok {
		delete(o.markers, page)
		o.states.set(page, InFlight)
		f := o.newFillLocked(page, page+1, page)
		f.held = held
		return Marker, f
	}
	lo, hi := window()
	return Absent, o.claimLocked(page, max(lo, 0), min(hi, o.npages))
}

// Claim claims every run of absent pages in [lo, hi) for reading ahead:
// fills with no faulting page, whose failure poisons nothing.
func (o *Cache) Claim(lo, hi int64) []*Fill {
	lo, hi = max(lo, 0), min(hi, o.npages)
	o.mu.Lock()
	defer o.mu.Unlock()
	var fs []*Fill
	for p := lo; p < hi; p++ {
		if o.claimableLocked(p) {
			f := o.claimLocked(p, p, hi)
			f.Page = -1
			fs = append(fs, f)
			p = f.End
		}
	}
	return fs
}

// claimLocked marks the claimable run around page inside [lo, hi) in flight.
func (o *Cache) claimLocked(page, lo, hi int64) *Fill {
	start, end := page, page+1
	for start > lo && o.claimableLocked(start-1) {
		start--
	}
	for end < hi && o.claimableLocked(end) {
		end++
	}
	for p := start; p < end; p++ {
		o.states.set(p, InFlight)
	}
	return o.newFillLocked(start, end, page)
}

func (o *Cache) newFillLocked(start, end, page int64) *Fill {
	f := &Fill{Start: start, End: end, Page: page, marker: -1, done: make(chan struct{})}
	o.fills = append(o.fills, f)
	if o.col != nil {
		o.col.fillStarted()
	}
	return f
}

// claimableLocked reports whether a fill may read the page: errors are not sticky,
// so an errored page is read again like an absent one. A marker is not: its
// bytes are here already.
func (o *Cache) claimableLocked(page int64) bool {
	s := o.states.get(page)
	if s != Absent && s != Error {
		return false
	}
	_, held := o.markers[page]
	return !held
}

// Hold keeps page of the fill f out of the cache file as a marker, with its
// bytes (which it copies). It reports false, and the caller writes the page
// as usual, when the object holds MaxMarkers already.
func (o *Cache) Hold(f *Fill, page int64, b []byte) bool {
	if page < f.Start || page >= f.End || len(b) != PageSize {
		panic(fmt.Sprintf("pagecache %s: hold page %d of fill [%d, %d)", o.name, page, f.Start, f.End))
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.markers) >= MaxMarkers {
		return false
	}
	f.marker, f.held = page, append([]byte(nil), b...)
	return true
}

// WritePages copies whole pages into the cache file at page: readahead,
// which waits for the writes that faulters wait for (WritePagesUrgent). A
// whole-page write is atomic for every mapper: the page is a hole until
// the write completes.
func (o *Cache) WritePages(page int64, data []byte) error { return o.writePages(page, data, false) }

// WritePagesUrgent is WritePages for pages a faulter waits for: it goes
// before the readahead writes waiting for the file.
func (o *Cache) WritePagesUrgent(page int64, data []byte) error {
	return o.writePages(page, data, true)
}

func (o *Cache) writePages(page int64, data []byte, urgent bool) error {
	if len(data)%PageSize != 0 {
		return fmt.Errorf("pagecache %s: write of %d bytes at page %d is not whole pages", o.name, len(data), page)
	}
	off := page * PageSize
	for len(data) > 0 {
		n := min(len(data), writePiece)
		if err := o.pwrite(data[:n], off, urgent); err != nil {
			return err
		}
		data, off = data[n:], off+int64(n)
	}
	return nil
}

// pwrite writes one piece with the file's write lock held.
func (o *Cache) pwrite(data []byte, off int64, urgent bool) error {
	o.wlock.lock(urgent)
	defer o.wlock.unlock()
	for len(data) > 0 {
		n, err := unix.Pwrite(int(o.file.Fd()), data, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("pagecache %s: pwrite %d bytes at offset %d: %w", o.name, len(data), off, err)
		}
		data, off = data[n:], off+int64(n)
	}
	return nil
}

// End finishes a fill: pages [okStart, okEnd) were written and become
// uptodate; if err is non-nil the fill's faulting page failed and is marked
// Error; every other page of the fill goes back to absent. Waiters are woken.
// On a huge backing, each extent the written pages made wholly uptodate is
// handed to the collapser; nobody waits for it.
func (o *Cache) End(f *Fill, okStart, okEnd int64, err error) {
	okStart, okEnd = max(okStart, f.Start), min(okEnd, f.End)
	o.mu.Lock()
	var n int64
	for p := f.Start; p < f.End; p++ {
		switch {
		case p == f.marker && okStart <= p && p < okEnd:
			o.states.set(p, Absent)
			o.markers[p] = f.held
		case okStart <= p && p < okEnd:
			o.states.set(p, Uptodate)
			n++
		case p == f.Page && err != nil:
			o.states.set(p, Error)
		default:
			o.states.set(p, Absent)
		}
	}
	for i, g := range o.fills {
		if g == f {
			o.fills = append(o.fills[:i], o.fills[i+1:]...)
			if o.col != nil {
				o.col.fillEnded()
			}
			break
		}
	}
	if n > 0 {
		o.queueWholeLocked(okStart, okEnd)
	}
	o.mu.Unlock()
	o.resident.Add(n)
	f.okStart, f.okEnd, f.err = okStart, okEnd, err
	if f.marker >= 0 {
		f.held = nil
	}
	close(f.done)
}

// queueWholeLocked hands the collapser every extent overlapping pages [lo, hi)
// that is now wholly uptodate — no hole, no marker held back, no page in
// flight or in error — and not huge or queued already. Called with o.mu
// held; it never blocks.
func (o *Cache) queueWholeLocked(lo, hi int64) {
	if o.col == nil || o.closed {
		return
	}
	for x := lo / HugePages; x <= (hi-1)/HugePages && x < o.nhuge; x++ {
		if o.states.isHuge(x) || o.states.isQueued(x) || !o.states.extentUptodate(x) {
			continue
		}
		if o.col.enqueue(o, x) {
			o.states.setQueued(x, true)
		}
	}
}

// errSkip is a collapse not attempted: the extent is no longer whole, or
// the cache is closed.
var errSkip = errors.New("extent no longer collapsible")

// collapse makes extent x one huge folio with MADV_COLLAPSE, if its pages
// are still all uptodate. MADV_COLLAPSE fills holes with zeros, hence the
// check, and while it runs the extent is marked collapsing: its pages stay
// uptodate (nothing claims an uptodate page), Punch waits before touching
// it, and faults on it wait in the kernel on the locked pages, never on us.
// If retry is set and the collapse fails with EAGAIN, the extent stays
// marked queued: the collapser tries it again.
func (o *Cache) collapse(x int64, retry bool) error {
	o.mu.Lock()
	if o.closed || o.states.isHuge(x) || !o.states.extentUptodate(x) {
		o.states.setQueued(x, false)
		o.mu.Unlock()
		return errSkip
	}
	o.collapsing = append(o.collapsing, x)
	o.mu.Unlock()
	at := unsafe.Add(o.view, x*HugeSize)
	err := madviseCollapse(at)
	if err == nil {
		// MADV_COLLAPSE maps the new folio here with a PMD. Unmap it: the
		// daemon never reads the view, and 2 MiB of RSS per extent would
		// make the daemon the OOM killer's first choice.
		unix.Madvise(unsafe.Slice((*byte)(at), HugeSize), unix.MADV_DONTNEED)
	}
	o.mu.Lock()
	for i, y := range o.collapsing {
		if y == x {
			o.collapsing = append(o.collapsing[:i], o.collapsing[i+1:]...)
			break
		}
	}
	if err == nil {
		o.states.setHuge(x, true)
	}
	if !retry || !errors.Is(err, unix.EAGAIN) {
		o.states.setQueued(x, false)
	}
	o.collapsed.Broadcast()
	o.mu.Unlock()
	if err != nil {
		return fmt.Errorf("pagecache %s: MADV_COLLAPSE of the extent at offset %d: %w", o.name, x*HugeSize, err)
	}
	return nil
}

// unqueue clears extent x's queued mark, for a retry that never happens.
func (o *Cache) unqueue(x int64) {
	o.mu.Lock()
	o.states.setQueued(x, false)
	o.mu.Unlock()
}

// collapsingInLocked reports whether an extent overlapping pages [start, end) is
// in MADV_COLLAPSE.
func (o *Cache) collapsingInLocked(start, end int64) bool {
	for _, x := range o.collapsing {
		if x*HugePages < end && start < (x+1)*HugePages {
			return true
		}
	}
	return false
}

// widenLocked grows pages [start, end) to whole extents where it cuts a huge one.
// A punch of part of a huge folio zeroes that part and then tries to split
// the folio (truncate_inode_partial_folio); if the split fails, the zeroed
// pages stay in the cache, present, and clients would read zeros.
func (o *Cache) widenLocked(start, end int64) (int64, int64) {
	if o.nhuge == 0 {
		return start, end
	}
	if x := start / HugePages; start%HugePages != 0 && x < o.nhuge && o.states.isHuge(x) {
		start = x * HugePages
	}
	if x := (end - 1) / HugePages; end%HugePages != 0 && x < o.nhuge && o.states.isHuge(x) {
		end = (x + 1) * HugePages
	}
	return start, end
}

// Punch drops pages [start, end) from the cache with a hole punch, which
// unmaps them in every client: their next access faults MISSING again. Pages
// in flight are left alone. A huge extent the range cuts is dropped whole
// (its pages are all uptodate: none in flight). If an extent of the range
// is being collapsed, Punch waits for that collapse: a punch racing
// collapse_file could leave holes it fills with zeros. It returns the
// number of pages dropped.
func (o *Cache) Punch(start, end int64) (int64, error) {
	_, _, n, err := o.PunchRange(start, end)
	return n, err
}

// PunchRange is Punch, and also returns the range it punched: [start, end)
// clipped to the object and widened to whole huge extents.
func (o *Cache) PunchRange(start, end int64) (lo, hi, dropped int64, err error) {
	start, end = max(start, 0), min(end, o.npages)
	if start >= end {
		return start, start, 0, nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for {
		start, end = o.widenLocked(start, end)
		if !o.collapsingInLocked(start, end) {
			break
		}
		o.collapsed.Wait()
	}
	for p := range o.markers {
		if start <= p && p < end {
			delete(o.markers, p)
		}
	}
	defer func() { o.resident.Add(-dropped) }()
	for p := start; p < end; {
		if o.states.get(p) != Uptodate {
			p++
			continue
		}
		q := p
		for q < end && o.states.get(q) == Uptodate {
			q++
		}
		err := unix.Fallocate(int(o.file.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, p*PageSize, (q-p)*PageSize)
		if err != nil {
			return start, end, dropped, fmt.Errorf("pagecache %s: punch pages [%d, %d) (offset %d): %w", o.name, p, q, p*PageSize, err)
		}
		for i := p; i < q; i++ {
			o.states.set(i, Absent)
		}
		// A huge extent lies wholly inside one run: it is widened to
		// whole extents, and all its pages are uptodate.
		if o.nhuge > 0 {
			for x := p / HugePages; x <= (q-1)/HugePages && x < o.nhuge; x++ {
				o.states.setHuge(x, false)
			}
		}
		dropped += q - p
		p = q
	}
	return start, end, dropped, nil
}

// Busy reports whether a fill of the cache is in flight.
func (o *Cache) Busy() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.fills) > 0
}

// Close releases the cache file. Clients that still map it keep their
// pages; the file, unlinked from birth, is freed when the last of them
// unmaps. A collapse in progress is waited for, and none starts after.
func (o *Cache) Close() error {
	o.mu.Lock()
	o.closed = true
	for len(o.collapsing) > 0 {
		o.collapsed.Wait()
	}
	view := o.view
	o.view = nil
	o.mu.Unlock()
	if view != nil {
		unix.MunmapPtr(view, uintptr(o.nhuge)*HugeSize)
	}
	return o.file.Close()
}

// Fill is one read in flight: the page lock of pages [Start, End).
type Fill struct {
	Start, End int64 // pages claimed
	Page       int64 // the page whose fault started it; -1 for readahead

	marker int64  // the page held back, or -1
	held   []byte // its bytes; for a marker's own fill, what to write

	done           chan struct{}
	okStart, okEnd int64
	err            error
	waited         atomic.Bool // a faulter waits for it (Wait)
}

// Wait marks the fill as one a faulter waits for, whose writes go before
// readahead's (WritePagesUrgent), and returns Done.
func (f *Fill) Wait() <-chan struct{} {
	f.waited.Store(true)
	return f.done
}

// Waited reports whether a faulter waits, or has waited, for the fill.
func (f *Fill) Waited() bool { return f.waited.Load() }

// Held is, for the fill Begin returns for a marker, the marker's bytes.
func (f *Fill) Held() []byte { return f.held }

// Done is closed when the fill has ended.
func (f *Fill) Done() <-chan struct{} { return f.done }

// Uptodate reports, once the fill has ended, whether page was filled into
// the cache file (a page held back as a marker was not).
func (f *Fill) Uptodate(page int64) bool {
	return f.okStart <= page && page < f.okEnd && page != f.marker
}

// Err is the read error of the fill's faulting page, once it has ended.
func (f *Fill) Err() error { return f.err }

// ErrTHP reports that shmem transparent huge pages would turn one page
// written into the cache into a huge folio of zeros.
var ErrTHP = errors.New("shmem transparent huge pages are enabled")
