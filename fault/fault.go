// Package fault is filemap's filemap_fault: it resolves a MISSING fault that a
// client's userfaultfd reported on a region mapping an object's cache.
//
// The steps are the kernel's. Look the page up. Uptodate (the fault raced a
// fill that has finished): wake the faulter. In flight: wait for that fill,
// the page lock, then wake. A miss: read the read-around window from the
// store, write it into the memfd, wake. A failed read of the faulting page is
// retried a few times with backoff, then that page alone is poisoned, so the
// faulter gets SIGBUS at its address; a failure in the rest of the window
// never poisons anything. Waking a faulter does not map the page: the woken
// access runs again, finds the page in the memfd and the kernel maps it.
package fault

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/readahead"
	"github.com/filemap/filemap/store"
	"golang.org/x/sys/unix"
)

const ps = pagecache.PageSize

// Object is an object as the fault path sees it: its cache and its store.
type Object struct {
	Cache *pagecache.Object
	Store store.Store
}

// Target is the userfaultfd through which a region's faults are resolved.
type Target interface {
	Wake(start, length uintptr) error
	Poison(start, length uintptr, mode uint64) (uintptr, error)
}

// Region is one contiguous range of a client's memory that maps an object's
// cache: the user-space vm_area_struct.
type Region struct {
	Obj    *Object
	Addr   uintptr // first byte of the range in the client
	PgOff  int64   // object page mapped at Addr
	NPages int64
	Target Target

	advice atomic.Uint32 // readahead.Advice
}

// Advice is the region's current access advice.
func (r *Region) Advice() readahead.Advice { return readahead.Advice(r.advice.Load()) }

// SetAdvice changes the advice that later misses follow.
func (r *Region) SetAdvice(a readahead.Advice) { r.advice.Store(uint32(a)) }

// Contains reports whether addr lies in the region.
func (r *Region) Contains(addr uintptr) bool {
	return addr >= r.Addr && addr < r.Addr+uintptr(r.NPages)*ps
}

// Page is the object page that addr maps.
func (r *Region) Page(addr uintptr) int64 { return r.PgOff + int64(addr-r.Addr)/ps }

// wake wakes the faulters of object pages [start, end) in this region.
func (r *Region) wake(start, end int64) error {
	start, end = max(start, r.PgOff), min(end, r.PgOff+r.NPages)
	if start >= end {
		return nil
	}
	addr := r.Addr + uintptr(start-r.PgOff)*ps
	return r.Target.Wake(addr, uintptr(end-start)*ps)
}

// Counters are the fault path's statistics.
type Counters struct {
	Major         atomic.Uint64 // faults that needed store I/O (VM_FAULT_MAJOR)
	Minor         atomic.Uint64 // faults served from the cache or by another fault's read
	Sigbus        atomic.Uint64 // pages poisoned
	StoreReads    atomic.Uint64
	StoreBytes    atomic.Uint64
	StoreErrors   atomic.Uint64
	FillsInFlight atomic.Int64
}

// Config tunes the fault path.
type Config struct {
	RaPages      int64         // read-around window in pages (readahead.DefaultPages if 0)
	Retries      int           // extra reads of a failing faulting page before SIGBUS
	RetryBackoff time.Duration // first retry's delay, doubled each time
	Log          *slog.Logger
}

// Handler resolves faults. It is safe for concurrent use.
type Handler struct {
	cfg  Config
	c    *Counters
	bufs sync.Pool
}

// NewHandler makes a fault path that counts into c.
func NewHandler(cfg Config, c *Counters) *Handler {
	if cfg.RaPages <= 0 {
		cfg.RaPages = readahead.DefaultPages
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	h := &Handler{cfg: cfg, c: c}
	size := int(2*cfg.RaPages) * ps // a sequential window is twice read-around
	h.bufs.New = func() any { b := make([]byte, size); return &b }
	return h
}

// Fault handles one fault message at addr in region r. It never blocks on
// I/O: an uptodate page is woken at once, anything else goes to a goroutine
// started with spawn, which the caller uses to know when no more work refers
// to r's userfaultfd.
func (h *Handler) Fault(r *Region, addr uintptr, spawn func(func())) {
	page := r.Page(addr)
	if page >= r.Obj.Cache.NPages() {
		// The kernel sends SIGBUS past the memfd's end before userfaultfd
		// sees the fault; only a lying client gets here.
		h.poison(r, page, fmt.Errorf("page %d is past the end of %s", page, r.Obj.Cache.Name()))
		return
	}
	if s, _ := r.Obj.Cache.Lookup(page); s == pagecache.Uptodate {
		h.c.Minor.Add(1)
		h.wake(r, page, page+1)
		return
	}
	spawn(func() { h.resolve(r, page) })
}

// resolve is the slow part of a fault: wait for or start the read.
func (h *Handler) resolve(r *Region, page int64) {
	cache := r.Obj.Cache
	major := false
	defer func() {
		if major {
			h.c.Major.Add(1)
		} else {
			h.c.Minor.Add(1)
		}
	}()
	for {
		w := readahead.Around(page, h.cfg.RaPages, cache.NPages(), r.Advice())
		s, f := cache.Begin(page, w.Start, w.End)
		switch s {
		case pagecache.Uptodate:
			h.wake(r, page, page+1)
			return
		case pagecache.InFlight:
			<-f.Done()
			if f.Uptodate(page) {
				h.wake(r, page, page+1)
				return
			}
			if f.Page == page && f.Err() != nil {
				// That fill already retried this very page: share its verdict.
				h.poison(r, page, f.Err())
				return
			}
			// Our page was only readahead for a fill that failed: read it ourselves.
		default:
			major = true
			h.fill(r.Obj, f)
			if f.Uptodate(page) {
				h.wake(r, f.Start, f.End)
			} else {
				h.poison(r, page, f.Err())
			}
			return
		}
	}
}

// fill reads the pages f claimed and ends it. The faulting page decides the
// outcome: if the window read fails, the pages read before the failure are
// kept only when they include the faulting page; otherwise the faulting page
// is read alone, with retries.
func (h *Handler) fill(o *Object, f *pagecache.Fill) {
	h.c.FillsInFlight.Add(1)
	defer h.c.FillsInFlight.Add(-1)
	bp := h.bufs.Get().(*[]byte)
	defer h.bufs.Put(bp)
	n := f.End - f.Start
	buf := (*bp)[:n*ps]
	got, err := h.read(o, buf, f.Start)
	if err == nil {
		h.write(o, f, f.Start, f.End, buf)
		return
	}
	if k := int64(got / ps); f.Page < f.Start+k {
		h.cfg.Log.Debug("readahead failed after the faulting page", "object", o.Cache.Name(), "err", err)
		h.write(o, f, f.Start, f.Start+k, buf)
		return
	}
	one := buf[(f.Page-f.Start)*ps:][:ps]
	delay := h.cfg.RetryBackoff
	for try := 0; ; try++ {
		if n > 1 || try > 0 {
			_, err = h.read(o, one, f.Page)
			if err == nil {
				h.write(o, f, f.Page, f.Page+1, one)
				return
			}
		}
		if try >= h.cfg.Retries {
			break
		}
		time.Sleep(delay)
		delay *= 2
	}
	o.Cache.End(f, 0, 0, fmt.Errorf("read %s page %d (offset %d): %w", o.Cache.Name(), f.Page, f.Page*ps, err))
}

// read reads whole pages from page on into buf; the part past the object's
// end is zeroed, as the kernel zeroes the tail of the last page.
func (h *Handler) read(o *Object, buf []byte, page int64) (int, error) {
	h.c.StoreReads.Add(1)
	n, err := store.ReadFull(o.Store, buf, page*ps)
	h.c.StoreBytes.Add(uint64(n))
	if err != nil {
		h.c.StoreErrors.Add(1)
		return n, err
	}
	clear(buf[n:])
	return len(buf), nil
}

// write puts pages [start, end) of buf (which begins at start) into the
// memfd and ends the fill with them uptodate.
func (h *Handler) write(o *Object, f *pagecache.Fill, start, end int64, buf []byte) {
	if err := o.Cache.WritePages(start, buf[:(end-start)*ps]); err != nil {
		h.cfg.Log.Error("cannot fill the cache", "object", o.Cache.Name(), "err", err)
		o.Cache.End(f, 0, 0, err)
		return
	}
	o.Cache.End(f, start, end, nil)
}

func (h *Handler) wake(r *Region, start, end int64) {
	if err := r.wake(start, end); err != nil && !gone(err) {
		h.cfg.Log.Warn("UFFDIO_WAKE failed", "object", r.Obj.Cache.Name(), "page", start, "err", err)
	}
}

// poison makes the faulting access of page get SIGBUS at its address: the
// page's PTE becomes a poison marker and the faulter is woken onto it.
func (h *Handler) poison(r *Region, page int64, cause error) {
	h.c.Sigbus.Add(1)
	addr := r.Addr + uintptr(page-r.PgOff)*ps
	h.cfg.Log.Warn("read failed: SIGBUS for the faulting page", "object", r.Obj.Cache.Name(),
		"offset", page*ps, "addr", fmt.Sprintf("%#x", addr), "err", cause)
	_, err := r.Target.Poison(addr, ps, 0)
	for try := 0; errors.Is(err, unix.EAGAIN) && try < 100; try++ {
		// A non-cooperative event (REMOVE, UNMAP, REMAP, FORK) is unread;
		// the reader drains it and the ioctl works again.
		time.Sleep(time.Millisecond)
		_, err = r.Target.Poison(addr, ps, 0)
	}
	switch {
	case err == nil:
	case errors.Is(err, unix.EEXIST):
		h.wake(r, page, page+1) // poisoned already: a duplicate message; wake it onto the marker
	case !gone(err):
		h.cfg.Log.Error("UFFDIO_POISON failed", "object", r.Obj.Cache.Name(), "addr", fmt.Sprintf("%#x", addr), "err", err)
	}
}

// WillNeed starts reads of the absent pages of [start, end) in the
// background, a read-around window at a time, as MADV_WILLNEED does. Faults
// on those pages meanwhile wait for these reads.
func (h *Handler) WillNeed(o *Object, start, end int64, spawn func(func())) {
	start, end = max(start, 0), min(end, o.Cache.NPages())
	for p := start; p < end; {
		s, f := o.Cache.Begin(p, p, min(p+h.cfg.RaPages, end))
		if s != pagecache.Absent {
			p++
			continue
		}
		spawn(func() { h.fill(o, f) })
		p = f.End
	}
}

// gone reports an error that means the client's memory no longer exists.
func gone(err error) bool {
	return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
}
