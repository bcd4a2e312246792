package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/filemap/filemap/internal/progress"
	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/remote"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

// prefetch replays a recorded working set into one VM: the swap-in
// readahead of a whole restore. A fetcher reads the recorded pages from the
// store into the cache, batch by batch in recorded order, a few batches
// ahead; the VM's loop copies a fetched batch into the guest whenever no
// fault message is pending, so a guest's own fault never waits behind more
// than one batch. From a store that fetches in chunks (store/remote), the
// fetcher plans the record by chunk instead (see fetchHeld).
type prefetch struct {
	v     *vm
	units []int64         // the plan: unit indexes in recorded order, each once, all inside the VM's regions
	at    []time.Duration // when the recorded restore first touched each
	plan  bitset          // by unit index: in the plan
	done  bitset          // by unit index: copied in by the prefetch
	tardy bitset          // by unit index: faulted on before the prefetch got there

	batch int            // units per batch
	ready chan []int64   // fetched batches, sorted by index
	cur   []int64        // the batch being installed, what is left of it
	over  bool           // every batch installed, or the VM is gone
	fetch sync.WaitGroup // the fetcher
	t0    time.Time      // when the prefetch began
	took  time.Duration  // how long it ran, once over

	line  *progress.Reporter  // the progress line, on a terminal; nil if none
	stopL func()              // stops redrawing it
	bar   atomic.Pointer[bar] // what the progress line shows

	installed, late, outside atomic.Uint64
	wasted                   uint64
	failed                   atomic.Bool // a held fetch failed: logged
}

type bar struct{ done, total int }

// newPrefetch plans the replay of rec into v: each recorded page, in the
// record's page size, becomes the units of v's page size that cover it. A
// record of another memory file (by size) is refused with a log line; one
// of another version of it is replayed with a warning — the pages are read
// from the current file, so only their choice may be stale.
func newPrefetch(v *vm, rec *Record) *prefetch {
	size := v.obj.file.Cache.Size()
	if rec.ObjectSize != size {
		v.log.Error("firecracker: not replaying the prefetch record: it is of a memory file of another size",
			"record", v.s.cfg.Prefetch, "record_size", rec.ObjectSize, "memory_size", size)
		return nil
	}
	if rec.ObjectVersion != v.obj.key.version {
		v.log.Warn("firecracker: the prefetch record is of another version of the memory file; replaying it anyway",
			"record", v.s.cfg.Prefetch, "record_version", rec.ObjectVersion, "memory_version", v.obj.key.version)
	}
	nunits := (size + int64(v.unit) - 1) / int64(v.unit)
	p := &prefetch{v: v, plan: newBitset(nunits), done: newBitset(nunits), tardy: newBitset(nunits),
		batch: max(1, v.s.cfg.PrefetchBatch*PageSize/int(v.unit)), ready: make(chan []int64, v.s.cfg.PrefetchAhead)}
	unit := int64(v.unit)
	for i, page := range rec.Pages {
		lo, hi := page*rec.PageSize, min((page+1)*rec.PageSize, size)
		for u := lo / unit; u*unit < hi; u++ {
			if p.plan.get(u) || v.regionOfIndex(u) == nil {
				continue
			}
			p.plan.set(u)
			p.units = append(p.units, u)
			p.at = append(p.at, rec.At[i])
		}
	}
	// Counted from now, before the restore is: a caller that sees the
	// restore sees its prefetch running. run always ends it.
	v.s.n.prefetching.Add(1)
	return p
}

// regionOfIndex is the region holding unit index i, or nil.
func (v *vm) regionOfIndex(i int64) *vmRegion {
	for _, r := range v.regions {
		if r.first <= i && i < r.end {
			return r
		}
	}
	return nil
}

// begin starts the fetcher, and the progress line if there is a terminal.
func (p *prefetch) begin() {
	p.t0 = time.Now()
	p.bar.Store(&bar{total: len(p.units)})
	p.v.log.Info("firecracker: prefetch started", "record", p.v.s.cfg.Prefetch, "planned", len(p.units),
		"bytes", int64(len(p.units))*int64(p.v.unit))
	p.fetch.Add(1)
	if h, ok := p.v.obj.file.Store.(holder); ok {
		go p.fetchHeld(h)
	} else {
		go p.fetcher()
	}
	if w := p.v.s.cfg.Progress; w != nil {
		p.line = progress.NewWriter(w, true, "filemap firecracker: ")
		p.line.Live("%s", p.progress())
		p.stopL = p.line.Every(200*time.Millisecond, p.progress)
	}
}

// progress is the progress line's text.
func (p *prefetch) progress() string {
	b := p.bar.Load()
	pct := 100.0
	if b.total > 0 {
		pct = 100 * float64(b.done) / float64(b.total)
	}
	const width = 30
	n := int(pct / 100 * width)
	return fmt.Sprintf("VM %d prefetch [%-*s] %d/%d pages (%.0f%%) %v",
		p.v.id, width, string(slices.Repeat([]byte("#"), n)), b.done, b.total, pct, time.Since(p.t0).Round(time.Millisecond))
}

// fetcher reads the plan into the cache, a batch at a time, and hands each
// fetched batch to the loop. It stops when the VM does.
func (p *prefetch) fetcher() {
	defer p.fetch.Done()
	defer func() {
		close(p.ready)
		p.v.wake() // the loop may be asleep, with nothing else to wake it
	}()
	for lo := 0; lo < len(p.units); lo += p.batch {
		// Start the reads of the batches after this one too: a remote
		// store's round trips overlap only if several batches' reads are
		// in flight, and a batch waits for its slowest read.
		for k := 1; k <= prefetchAhead; k++ {
			if a := lo + k*p.batch; a < len(p.units) {
				p.start(p.units[a:min(a+p.batch, len(p.units))])
			}
		}
		b := slices.Clone(p.units[lo:min(lo+p.batch, len(p.units))])
		p.read(b)
		slices.Sort(b)
		select {
		case p.ready <- b:
			p.v.wake()
		case <-p.v.stopped:
			return
		}
	}
}

// prefetchAhead is how many batches beyond the one being read have their
// reads started.
const prefetchAhead = 3

// start begins reading the absent cache pages of units, without waiting:
// WillNeed claims them, so read finds them in flight later.
func (p *prefetch) start(units []int64) {
	for _, run := range p.runs(units) {
		p.v.s.faults.WillNeed(&p.v.obj.file, run[0], run[1])
	}
}

// runs are the cache page ranges of units not yet installed or removed,
// adjacent ones merged, so that each becomes one store read.
func (p *prefetch) runs(units []int64) [][2]int64 {
	v := p.v
	var runs [][2]int64
	sorted := slices.Clone(units)
	slices.Sort(sorted)
	for _, u := range sorted {
		if v.installed.get(u) || v.removed.get(u) {
			continue
		}
		lo, hi := u*v.upages, (u+1)*v.upages
		if n := len(runs); n > 0 && runs[n-1][1] == lo {
			runs[n-1][1] = hi
			continue
		}
		runs = append(runs, [2]int64{lo, hi})
	}
	return runs
}

// read makes the cache pages of batch b uptodate: the absent ones are
// claimed and read in runs of adjacent pages, with at most
// Config.PrefetchParallel runs in flight. A failed read is not retried:
// the guest's own fault will read that page, with retries.
func (p *prefetch) read(b []int64) {
	v := p.v
	cache := v.obj.file.Cache
	runs := p.runs(b)
	sem := make(chan struct{}, v.s.cfg.PrefetchParallel)
	var wg sync.WaitGroup
	for _, run := range runs {
		if cache.CountUptodate(run[0], run[1]) == run[1]-run[0] {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-v.stopped:
			wg.Wait()
			return
		}
		v.s.faults.WillNeed(&v.obj.file, run[0], run[1])
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			for pg := run[0]; pg < run[1]; pg++ {
				if s, f := cache.Lookup(pg); s == pagecache.InFlight {
					<-f.Done()
				}
			}
		}()
	}
	wg.Wait()
}

// installNext copies the next fetched batch into the guest, if one is
// ready, and reports whether it did any work. Called by the loop when no
// message is pending.
func (p *prefetch) installNext() bool {
	if p.over {
		return false
	}
	if p.cur == nil {
		select {
		case b, ok := <-p.ready:
			if !ok {
				p.finish()
				return false
			}
			p.cur = b
		default:
			return false
		}
	}
	p.cur = p.install(p.cur)
	return true
}

// install copies the units of b (sorted) that are in the cache and neither
// in the guest nor removed, a run of adjacent ones per UFFDIO_COPY, without
// waking anyone (nobody waits on a page no fault asked for; a guest that
// faulted on one meanwhile is woken when its message is handled). It
// returns what is left of b after an EAGAIN: the loop reads the pending
// events first.
func (p *prefetch) install(b []int64) []int64 {
	v := p.v
	v.mu.RLock()
	defer v.mu.RUnlock()
	want := func(u int64) bool {
		return !v.installed.get(u) && !v.removed.get(u) && v.cacheState(u) == pagecache.Uptodate
	}
	for i := 0; i < len(b); {
		if !want(b[i]) {
			i++
			continue
		}
		r := v.regionOfIndex(b[i])
		j := i + 1
		for j < len(b) && b[j] == b[j-1]+1 && b[j] < r.end && want(b[j]) {
			j++
		}
		length := uintptr(j-i) * v.unit
		src := uintptr(v.obj.view) + uintptr(b[i])*v.unit
		var done uintptr
		var err error
		if v.unit == PageSize {
			done, err = v.u.Copy(r.addr(b[i]), src, length, uffd.CopyModeDontWake)
		} else {
			done, err = v.u.CopyHuge(r.addr(b[i]), src, length, v.unit, uffd.CopyModeDontWake)
		}
		k := int(done / v.unit)
		for _, u := range b[i : i+k] {
			v.installed.set(u)
			p.done.set(u)
			if v.rec != nil {
				v.rec.add(u) // a record made while replaying keeps the replayed pages
			}
		}
		p.installed.Add(uint64(k))
		v.s.n.prefetched.Add(uint64(k))
		v.s.metrics.Prefetch("installed", uint64(k))
		p.bar.Store(&bar{done: int(p.installed.Load()), total: len(p.units)})
		switch {
		case err == nil:
			i = j
		case errors.Is(err, unix.EAGAIN):
			return b[i+k:]
		case errors.Is(err, unix.EFAULT):
			i += k + 1 // evicted since it was fetched: left to its fault
		case gone(err):
			p.finish()
			return nil
		default:
			v.log.Warn("firecracker: prefetch: cannot copy a page into the guest", "offset", b[i+k]*int64(v.unit), "err", err)
			i += k + 1
		}
	}
	return nil
}

// demand notes a first fault on unit idx: a page of the plan the prefetch
// has not copied in yet is a late one; a page outside the plan shows the
// record is not the whole working set.
func (p *prefetch) demand(idx int64) {
	switch {
	case !p.plan.get(idx):
		p.outside.Add(1)
	case !p.done.get(idx) && !p.tardy.get(idx):
		p.tardy.set(idx)
		p.late.Add(1)
		p.v.s.n.late.Add(1)
		p.v.s.metrics.Prefetch("late", 1)
	}
}

// finish marks the replay over.
func (p *prefetch) finish() {
	if p.over {
		return
	}
	p.over = true
	p.took = time.Since(p.t0)
	p.v.s.n.prefetching.Add(-1)
	if p.line != nil {
		// Erased before the log line below, which would go on the
		// progress line's row if it is the same terminal.
		p.stopL()
		p.line.Clear()
	}
	p.v.log.Info("firecracker: prefetch done", "installed", p.installed.Load(), "planned", len(p.units),
		"late", p.late.Load(), "took", p.took.Round(time.Millisecond))
}

// end stops the fetcher once the VM is gone and estimates the waste: a
// page copied in that the recorded restore first touched later than this
// VM lived was most likely never touched here. (Which copied pages a guest
// touches is invisible to the handler: a touch of a present page is no
// fault.) Called by the VM's run, after the loop.
func (p *prefetch) end() {
	p.fetch.Wait()
	if !p.over {
		p.finish()
	}
	lived := time.Since(p.v.start)
	for i, u := range p.units {
		if p.done.get(u) && p.at[i] > lived {
			p.wasted++
		}
	}
	p.v.s.n.wasted.Add(p.wasted)
	p.v.s.metrics.Prefetch("wasted", p.wasted)
}

// summary is the VM's last log line's part about the replay.
func (p *prefetch) summary() []any {
	return []any{"prefetched", p.installed.Load(), "prefetch_planned", len(p.units), "prefetch_late", p.late.Load(),
		"prefetch_wasted_estimate", p.wasted, "faults_outside_record", p.outside.Load(),
		"prefetch_took", p.took.Round(time.Millisecond)}
}

// holder is a store that fetches planned byte ranges ahead of the reads
// that want them and keeps the bytes until released: store/remote's Store.
type holder interface {
	Hold(ranges [][2]int64) *remote.Held
	ChunkSize() int64
}

// fetchHeld is the fetcher for a store that fetches in chunks.
//
// Why not fetcher's batches: read run by run in recorded order, a
// scattered working set costs a ranged request per run of a few pages, and
// the runs that follow each other in the record are rarely in one chunk,
// while the store keeps only a few chunks: each chunk is fetched again
// and again. (On BenchmarkRestoreS3, 512 MiB with a 10 % working set, the
// batches had 1.9 GiB fetched in 2530 requests.)
//
// Instead the plan is grouped by the store's chunks, in the order the
// record first needs each, and for each chunk the ranges of its recorded
// pages not yet in the cache are held (Store.Hold): one request for the
// chunk, or a few for a chunk the record touches in a few far-apart
// places. Once the bytes are in memory the recorded pages are read into
// the cache from there, and the chunk's units go to the loop. A window of
// chunks is in flight at once, as much as the store asks a sequential
// reader to keep in flight (store.Readaheader), so that the requests
// overlap their round trips; it bounds the bytes held too.
//
// Demand faults still go first: held fetches are bulk requests, which
// leave the store's reserved slot to faults and queue behind theirs; a
// fault that wants the bytes of a held fetch still queued promotes it; and
// a chunk's cache pages are claimed only once its bytes are in memory, so
// that a fault on one of them meanwhile reads it itself (from the held
// fetch, if it covers the fault's window) rather than waiting on a
// prefetch fill that waits in the store's bulk queue.
func (p *prefetch) fetchHeld(h holder) {
	defer p.fetch.Done()
	defer func() {
		close(p.ready)
		p.v.wake() // the loop may be asleep, with nothing else to wake it
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, p.heldWindow(h))
	for _, units := range p.byChunk(h.ChunkSize()) {
		select {
		case sem <- struct{}{}:
		case <-p.v.stopped:
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p.fetchChunk(h, units)
		}()
	}
}

// heldWindow is how many chunks fetchHeld has in flight: what the store
// asks a sequential reader to keep in flight, and at least PrefetchAhead.
func (p *prefetch) heldWindow(h holder) int {
	n := p.v.s.cfg.PrefetchAhead
	if ra, ok := h.(store.Readaheader); ok && h.ChunkSize() > 0 {
		n = max(n, int(ra.ReadaheadBytes()/h.ChunkSize()))
	}
	return n
}

// byChunk groups the plan's units by the store chunk that holds the first
// byte of each: the chunks in the order the record first needs one of
// their units, the units of each in recorded order.
func (p *prefetch) byChunk(chunk int64) [][]int64 {
	unit := int64(p.v.unit)
	at := make(map[int64]int) // chunk → its index in groups
	var groups [][]int64
	for _, u := range p.units {
		c := u * unit / chunk
		i, ok := at[c]
		if !ok {
			i = len(groups)
			at[c] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], u)
	}
	return groups
}

// fetchChunk reads the units of one chunk into the cache through a Hold of
// the byte ranges of their pages that a read would claim, and hands them
// to the loop, sorted, in batches. A failed fetch (the store retried it)
// is not retried here: the guest's own faults read those pages, with
// retries.
func (p *prefetch) fetchChunk(h holder, units []int64) {
	v := p.v
	if ranges := p.claimable(units); len(ranges) > 0 {
		held := h.Hold(ranges)
		if err := held.Wait(v.stopped); err == nil {
			p.read(units) // from the held bytes: no request of its own
		} else if !v.stopping.Load() {
			// Once: a store that is down fails every chunk.
			level := slog.LevelDebug
			if !p.failed.Swap(true) {
				level = slog.LevelWarn
			}
			v.log.Log(context.Background(), level,
				"firecracker: prefetch: cannot fetch recorded pages; the guest's faults will read them", "err", err)
		}
		held.Release()
	}
	b := slices.Clone(units)
	slices.Sort(b)
	for lo := 0; lo < len(b); lo += p.batch {
		select {
		case p.ready <- b[lo:min(lo+p.batch, len(b))]:
			v.wake()
		case <-v.stopped:
			return
		}
	}
}

// claimable are the byte ranges of the units' cache pages that a read
// would claim now — absent, or failed before — of units neither installed
// nor removed, adjacent ones merged. Pages in the cache, or being read for
// a fault, are not fetched again.
func (p *prefetch) claimable(units []int64) [][2]int64 {
	cache := p.v.obj.file.Cache
	var rs [][2]int64
	for _, run := range p.runs(units) {
		for pg := run[0]; pg < run[1]; pg++ {
			if s, _ := cache.Lookup(pg); s != pagecache.Absent && s != pagecache.Error {
				continue
			}
			off := pg * PageSize
			if n := len(rs); n > 0 && rs[n-1][1] == off {
				rs[n-1][1] += PageSize
				continue
			}
			rs = append(rs, [2]int64{off, off + PageSize})
		}
	}
	return rs
}
