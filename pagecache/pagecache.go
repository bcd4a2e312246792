// Package pagecache is filemap's address_space: the pages of one object read
// so far, held in a memfd that clients map, with a page-state table (absent,
// in flight, uptodate, error) and the page lock.
//
// The memfd is the page cache the kernel sees. A page written into it with a
// whole-page pwrite is mapped by every client's next access with no message
// to the handler; a hole raises a MISSING fault. In-flight fills play the part
// of PG_locked: a fault on a page that is being read waits for that read and
// never starts another.
package pagecache

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// PageSize is the unit of the cache: the base page of x86-64 and arm64 4K.
const PageSize = 4096

// State is what the cache knows of one page.
type State uint8

const (
	Absent   State = iota // a hole in the memfd
	InFlight              // claimed by a fill that has not finished
	Uptodate              // in the memfd, whole
	Error                 // the last read failed; the next fault reads again

	// Marker is a page held back from the memfd: its bytes wait in memory
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

// Object is the cache of one object.
type Object struct {
	name   string
	size   int64
	npages int64
	memfd  *os.File

	mu       sync.Mutex
	states   table
	fills    []*Fill          // in flight; few at a time, so a slice is enough
	markers  map[int64][]byte // pages held back, with their bytes
	resident atomic.Int64
}

// New makes the cache of an object of size bytes: a memfd of size rounded up
// to a page, sealed against growing and shrinking so that no client can
// truncate pages from under the others.
func New(name string, size int64) (*Object, error) {
	if size < 0 {
		return nil, fmt.Errorf("pagecache %s: negative size %d", name, size)
	}
	fd, err := unix.MemfdCreate("filemap:"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("pagecache %s: memfd_create: %w", name, err)
	}
	memfd := os.NewFile(uintptr(fd), "memfd:"+name)
	npages := (size + PageSize - 1) / PageSize
	if err := unix.Ftruncate(fd, npages*PageSize); err != nil {
		memfd.Close()
		return nil, fmt.Errorf("pagecache %s: size memfd to %d bytes: %w", name, npages*PageSize, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		memfd.Close()
		return nil, fmt.Errorf("pagecache %s: seal memfd: %w", name, err)
	}
	return &Object{name: name, size: size, npages: npages, memfd: memfd, states: newTable(npages),
		markers: make(map[int64][]byte)}, nil
}

// Name is the object's name in errors and logs.
func (o *Object) Name() string { return o.name }

// Size is the object's length in bytes.
func (o *Object) Size() int64 { return o.size }

// NPages is the number of pages, the last one possibly partial.
func (o *Object) NPages() int64 { return o.npages }

// Resident is the number of pages in the memfd.
func (o *Object) Resident() int64 { return o.resident.Load() }

// AllocatedBytes is the memory the memfd holds, as the kernel counts it.
func (o *Object) AllocatedBytes() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(o.memfd.Fd()), &st); err != nil {
		return 0, fmt.Errorf("pagecache %s: fstat memfd: %w", o.name, err)
	}
	return st.Blocks * 512, nil
}

// MetadataBytes is the memory the page-state table holds.
func (o *Object) MetadataBytes() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.states.bytes() + int64(len(o.fills))*64 + int64(len(o.markers))*(PageSize+32)
}

// ReadOnlyFile opens the memfd again for reading only, through /proc, so a
// client can map the cache but never write into the copy others share.
func (o *Object) ReadOnlyFile() (*os.File, error) {
	path := fmt.Sprintf("/proc/self/fd/%d", o.memfd.Fd())
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("pagecache %s: reopen memfd read-only: %w", o.name, err)
	}
	return f, nil
}

// Lookup returns the state of a page and, when it is in flight, its fill.
func (o *Object) Lookup(page int64) (State, *Fill) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.states.get(page)
	if s == InFlight {
		return s, o.fillOf(page)
	}
	if _, ok := o.markers[page]; ok {
		return Marker, nil
	}
	return s, nil
}

func (o *Object) fillOf(page int64) *Fill {
	for _, f := range o.fills {
		if f.Start <= page && page < f.End {
			return f
		}
	}
	panic(fmt.Sprintf("pagecache %s: page %d in flight without a fill", o.name, page))
}

// CountUptodate is the number of uptodate pages in [lo, hi).
func (o *Object) CountUptodate(lo, hi int64) int64 {
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

// Begin is the lookup of the fault path. For an uptodate page it returns
// (Uptodate, nil). For a page some fill is reading it returns (InFlight, that
// fill): wait for it. For a marker it returns (Marker, a one-page fill
// holding its bytes): the caller writes them and calls End. Otherwise it
// asks window for the pages the miss should read, claims the run of absent
// pages around page inside them, marks them in flight and returns (Absent,
// the new fill): the caller now owns the read and must call End. window
// runs under the cache's lock, only for a miss.
func (o *Object) Begin(page int64, window func() (lo, hi int64)) (State, *Fill) {
	if page < 0 || page >= o.npages {
		panic(fmt.Sprintf("pagecache %s: page %d outside [0, %d)", o.name, page, o.npages))
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	switch s := o.states.get(page); s {
	case Uptodate:
		return s, nil
	case InFlight:
		return s, o.fillOf(page)
	}
	if held, ok := o.markers[page]; ok {
		delete(o.markers, page)
		o.states.set(page, InFlight)
		f := o.newFill(page, page+1, page)
		f.held = held
		return Marker, f
	}
	lo, hi := window()
	return Absent, o.claim(page, max(lo, 0), min(hi, o.npages))
}

// Claim claims every run of absent pages in [lo, hi) for reading ahead:
// fills with no faulting page, whose failure poisons nothing.
func (o *Object) Claim(lo, hi int64) []*Fill {
	lo, hi = max(lo, 0), min(hi, o.npages)
	o.mu.Lock()
	defer o.mu.Unlock()
	var fs []*Fill
	for p := lo; p < hi; p++ {
		if o.claimable(p) {
			f := o.claim(p, p, hi)
			f.Page = -1
			fs = append(fs, f)
			p = f.End
		}
	}
	return fs
}

// claim marks the claimable run around page inside [lo, hi) in flight.
func (o *Object) claim(page, lo, hi int64) *Fill {
	start, end := page, page+1
	for start > lo && o.claimable(start-1) {
		start--
	}
	for end < hi && o.claimable(end) {
		end++
	}
	for p := start; p < end; p++ {
		o.states.set(p, InFlight)
	}
	return o.newFill(start, end, page)
}

func (o *Object) newFill(start, end, page int64) *Fill {
	f := &Fill{Start: start, End: end, Page: page, marker: -1, done: make(chan struct{})}
	o.fills = append(o.fills, f)
	return f
}

// claimable reports whether a fill may read the page: errors are not sticky,
// so an errored page is read again like an absent one. A marker is not: its
// bytes are here already.
func (o *Object) claimable(page int64) bool {
	s := o.states.get(page)
	if s != Absent && s != Error {
		return false
	}
	_, held := o.markers[page]
	return !held
}

// Hold keeps page of the fill f out of the memfd as a marker, with its
// bytes (which it copies). It reports false, and the caller writes the page
// as usual, when the object holds MaxMarkers already.
func (o *Object) Hold(f *Fill, page int64, b []byte) bool {
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

// WritePages copies whole pages into the memfd at page. A whole-page write is
// atomic for every mapper: the page is a hole until the write completes.
func (o *Object) WritePages(page int64, data []byte) error {
	if len(data)%PageSize != 0 {
		return fmt.Errorf("pagecache %s: write of %d bytes at page %d is not whole pages", o.name, len(data), page)
	}
	off := page * PageSize
	for len(data) > 0 {
		n, err := unix.Pwrite(int(o.memfd.Fd()), data, off)
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
func (o *Object) End(f *Fill, okStart, okEnd int64, err error) {
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
			break
		}
	}
	o.mu.Unlock()
	o.resident.Add(n)
	f.okStart, f.okEnd, f.err = okStart, okEnd, err
	if f.marker >= 0 {
		f.held = nil
	}
	close(f.done)
}

// Punch drops pages [start, end) from the cache with a hole punch, which
// unmaps them in every client: their next access faults MISSING again. Pages
// in flight are left alone. It returns the number of pages dropped.
func (o *Object) Punch(start, end int64) (int64, error) {
	start, end = max(start, 0), min(end, o.npages)
	o.mu.Lock()
	defer o.mu.Unlock()
	for p := range o.markers {
		if start <= p && p < end {
			delete(o.markers, p)
		}
	}
	var dropped int64
	for p := start; p < end; {
		if o.states.get(p) != Uptodate {
			p++
			continue
		}
		q := p
		for q < end && o.states.get(q) == Uptodate {
			q++
		}
		err := unix.Fallocate(int(o.memfd.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, p*PageSize, (q-p)*PageSize)
		if err != nil {
			return dropped, fmt.Errorf("pagecache %s: punch pages [%d, %d): %w", o.name, p, q, err)
		}
		for i := p; i < q; i++ {
			o.states.set(i, Absent)
		}
		dropped += q - p
		p = q
	}
	o.resident.Add(-dropped)
	return dropped, nil
}

// Close releases the memfd. Clients that still map it keep their pages.
func (o *Object) Close() error {
	return o.memfd.Close()
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
}

// Held is, for the fill Begin returns for a marker, the marker's bytes.
func (f *Fill) Held() []byte { return f.held }

// Done is closed when the fill has ended.
func (f *Fill) Done() <-chan struct{} { return f.done }

// Uptodate reports, once the fill has ended, whether page was filled into
// the memfd (a page held back as a marker was not).
func (f *Fill) Uptodate(page int64) bool {
	return f.okStart <= page && page < f.okEnd && page != f.marker
}

// Err is the read error of the fill's faulting page, once it has ended.
func (f *Fill) Err() error { return f.err }

// ErrTHP reports that shmem transparent huge pages would turn one page
// written into the cache into a huge folio of zeros.
var ErrTHP = errors.New("shmem transparent huge pages are enabled")
