// Package reclaim is filemap's LRU lists and shrinker (mm/vmscan.c) with the
// refault detection of mm/workingset.c: it keeps the pages resident in all
// of a daemon's caches under one budget, and picks what to evict.
//
// The handler never sees a hit: a page in the memfd is mapped by the kernel
// with no message. So the policy is built from what the handler does see —
// misses, and misses on pages it evicted recently (refaults). It is S3-FIFO
// without the frequency bits it cannot observe: a new extent enters a small
// FIFO (a tenth of the budget) and is evicted from there first, remembered in
// a ghost FIFO; an extent whose pages fault again while their ghost is
// remembered has proven it is reused and enters the main FIFO, which a scan
// cannot flush. Plain FIFO, UMap's policy, is kept as the baseline.
//
// Space is reserved before pages are written, under the budget's lock, so
// the pages resident never exceed the budget by more than one extent, the
// largest read that had to fit.
//
// A cache that holds huge folios (see HugeCache) is tracked and evicted by
// whole aligned blocks, a huge folio's worth of pages, as the kernel's LRU
// holds a huge folio as one entry: a punch of part of a huge folio must be
// widened to all of it, so per-fill extents would see pages of their
// neighbours dropped with them and count them twice.
//
// Lock order: Budget.mu is taken before the lock of a cache it evicts from
// (a Cache's Punch runs under it), and under the daemon's. The whole order
// is in package server's documentation.
package reclaim

import (
	"container/list"
	"fmt"
	"sync"
)

// Cache is what reclaim evicts from: the page cache of one object.
type Cache interface {
	// Punch drops resident pages of [start, end) and says how many.
	Punch(start, end int64) (int64, error)
}

// HugeCache is a cache some of whose aligned blocks of HugePages pages may
// be one huge folio, which a punch drops whole. Its pages are committed to
// and evicted by whole blocks, so no punch of reclaim's ever cuts a block:
// it drops exactly the pages committed to the block, however the cache
// widens it.
type HugeCache interface {
	Cache
	// HugePages is the block size in pages, a power of two; 1 is none.
	HugePages() int64
}

// blockPages is c's block size, 1 for a cache without huge folios.
func blockPages(c Cache) int64 {
	if h, ok := c.(HugeCache); ok {
		return max(h.HugePages(), 1)
	}
	return 1
}

// Policy names an eviction policy.
type Policy string

const (
	S3FIFO Policy = "s3fifo" // the default: scan-resistant, refault-aware
	FIFO   Policy = "fifo"   // UMap's: the oldest fill goes first
)

// Check refuses a policy that is none of the above (empty is S3FIFO).
func (p Policy) Check() error {
	switch p {
	case "", S3FIFO, FIFO:
		return nil
	}
	return fmt.Errorf("unknown cache policy %q (want %s or %s)", p, S3FIFO, FIFO)
}

// Stats are reclaim's counters.
type Stats struct {
	BudgetPages   int64
	ResidentPages int64 // committed and reserved
	MaxResident   int64 // the most ResidentPages has been
	Evictions     uint64
	EvictedPages  uint64
	Refaults      uint64 // misses on pages whose ghost was remembered
}

// extent is what reclaim evicts in one punch: the pages one fill made
// resident, or for a HugeCache all the pages committed to one block since
// it was last evicted, start and end then being the hull of those pages.
type extent struct {
	c          Cache
	start, end int64
	pages      int64 // pages it made resident
	main       bool
	block      int64 // block size of a HugeCache's extent, else 0
	elem       *list.Element
}

type blockKey struct {
	c     Cache
	block int64 // first page / block size
}

// ghostShift sets the unit refaults are remembered in: 16 pages (64 KiB) of
// an object, a ghost costing some 50 bytes. Fills of read-around windows
// and larger cover whole blocks, so one scan's extents never share a block
// with the extents it evicted long before.
const ghostShift = 4

type ghostKey struct {
	c     Cache
	block int64
}

// Budget keeps the pages of many caches under a limit.
type Budget struct {
	mu       sync.Mutex // protects the fields below
	policy   Policy
	budget   int64 // pages; 0 means no limit
	resident int64
	small    list.List // of *extent, oldest first
	main     list.List
	smallPg  int64
	ghost    map[ghostKey]*list.Element
	ghostQ   list.List            // of ghostKey, oldest first
	blocks   map[blockKey]*extent // a HugeCache's extents, by block
	stats    Stats
}

// New makes a budget of the given pages under policy (S3FIFO if empty).
// A budget of 0 pages is no limit: pages are only counted.
func New(pages int64, policy Policy) *Budget {
	if policy == "" {
		policy = S3FIFO
	}
	return &Budget{policy: policy, budget: pages, ghost: make(map[ghostKey]*list.Element),
		blocks: make(map[blockKey]*extent)}
}

// Reserve makes room for n pages about to be written, evicting as needed,
// and counts them. It evicts nothing younger than what it must: if n alone
// exceeds the budget, it empties the cache and lets n in.
func (b *Budget) Reserve(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.budget > 0 && b.resident+n > b.budget && b.evictOne() {
	}
	b.resident += n
	b.stats.MaxResident = max(b.stats.MaxResident, b.resident)
}

// Commit records that pages [start, end) of c, n of them made resident,
// were read into space reserved for them; reserved − n pages go back.
// refault says the read was a miss on a page whose ghost is remembered.
// For a HugeCache the pages must be a dense run (n = end − start): they are
// added to the extents of the blocks they fall in, and a shortfall is taken
// from the last blocks. The fault path commits the runs on either side of a
// page it held back separately.
func (b *Budget) Commit(c Cache, start, end, n, reserved int64, refault bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.resident -= reserved - n
	if n <= 0 {
		return
	}
	bp := blockPages(c)
	if bp == 1 {
		b.push(&extent{c: c, start: start, end: end, pages: n}, refault)
		return
	}
	type piece struct{ lo, hi, k int64 }
	var pieces []piece
	for lo := start; lo < end; {
		hi := min(end, (lo/bp+1)*bp)
		pieces = append(pieces, piece{lo, hi, hi - lo})
		lo = hi
	}
	for i, short := len(pieces)-1, end-start-n; i >= 0 && short > 0; i-- {
		d := min(short, pieces[i].k)
		pieces[i].k -= d
		short -= d
	}
	for _, p := range pieces { // in order: the first block is the oldest
		if p.k > 0 {
			b.addToBlock(c, bp, p.lo, p.hi, p.k, refault)
		}
	}
}

// push queues a new extent: in the main queue if it refaulted.
func (b *Budget) push(e *extent, refault bool) {
	if refault && b.policy == S3FIFO {
		e.main = true
		e.elem = b.main.PushBack(e)
		return
	}
	e.elem = b.small.PushBack(e)
	b.smallPg += e.pages
}

// addToBlock adds k pages of [lo, hi), inside one block, to that block's
// extent. A new block's extent takes its place in the queues as any new
// extent; one that exists keeps its place, and moves to the main queue if
// these pages refaulted.
func (b *Budget) addToBlock(c Cache, bp, lo, hi, k int64, refault bool) {
	key := blockKey{c, lo / bp}
	e := b.blocks[key]
	if e == nil {
		e = &extent{c: c, start: lo, end: hi, pages: k, block: bp}
		b.blocks[key] = e
		b.push(e, refault)
		return
	}
	e.start, e.end = min(e.start, lo), max(e.end, hi)
	e.pages += k
	if e.main {
		return
	}
	if refault && b.policy == S3FIFO {
		b.small.Remove(e.elem)
		b.smallPg -= e.pages - k
		e.main = true
		e.elem = b.main.PushBack(e)
		return
	}
	b.smallPg += k
}

// Release gives back reserved pages that were not written.
func (b *Budget) Release(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.resident -= n
}

// Refault reports whether a miss at page of c falls in an extent evicted
// recently, and counts it.
func (b *Budget) Refault(c Cache, page int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.ghost[ghostKey{c, page >> ghostShift}]; ok {
		b.stats.Refaults++
		return true
	}
	return false
}

// evictOne evicts one extent; false when nothing is left to evict.
func (b *Budget) evictOne() bool {
	var q *list.List
	switch {
	case b.small.Len() > 0 && (b.policy == FIFO || b.smallPg*10 >= b.budget || b.main.Len() == 0):
		q = &b.small
	case b.main.Len() > 0:
		q = &b.main
	default:
		return false
	}
	e := q.Remove(q.Front()).(*extent)
	b.drop(e)
	if !e.main {
		b.smallPg -= e.pages
		b.remember(e)
	}
	return true
}

// drop punches an extent's pages out of its cache. A block's extent is
// punched over the whole block: every page resident there was committed to
// it, and a punch that never cuts a block is never widened. Pages in flight
// stay (their fill commits them later, to a new extent); a failed punch
// leaves pages we no longer count. A page written but not yet committed
// when its block is punched is dropped with it and committed afterwards:
// counted until that new extent is evicted, which is the safe side.
func (b *Budget) drop(e *extent) {
	if e.block > 0 {
		lo := e.start &^ (e.block - 1)
		e.c.Punch(lo, lo+e.block)
		delete(b.blocks, blockKey{e.c, lo / e.block})
	} else {
		e.c.Punch(e.start, e.end)
	}
	b.resident -= e.pages
	b.stats.Evictions++
	b.stats.EvictedPages += uint64(e.pages)
}

// remember keeps an evicted small-queue extent as ghosts, as many as the
// main queue could hold.
func (b *Budget) remember(e *extent) {
	for blk := e.start >> ghostShift; blk <= (e.end-1)>>ghostShift; blk++ {
		k := ghostKey{e.c, blk}
		if old, ok := b.ghost[k]; ok {
			b.ghostQ.Remove(old)
		}
		b.ghost[k] = b.ghostQ.PushBack(k)
	}
	maxGhosts := max(b.budget>>ghostShift, 64)
	for int64(b.ghostQ.Len()) > maxGhosts {
		delete(b.ghost, b.ghostQ.Remove(b.ghostQ.Front()).(ghostKey))
	}
}

// Forget drops c's extents and ghosts without punching, for a cache that
// is going away or has been emptied.
func (b *Budget) Forget(c Cache) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, q := range []*list.List{&b.small, &b.main} {
		for el := q.Front(); el != nil; {
			next := el.Next()
			if e := el.Value.(*extent); e.c == c {
				q.Remove(el)
				b.resident -= e.pages
				if !e.main {
					b.smallPg -= e.pages
				}
				if e.block > 0 {
					delete(b.blocks, blockKey{c, e.start / e.block})
				}
			}
			el = next
		}
	}
	for el := b.ghostQ.Front(); el != nil; {
		next := el.Next()
		if k := el.Value.(ghostKey); k.c == c {
			b.ghostQ.Remove(el)
			delete(b.ghost, k)
		}
		el = next
	}
}

// Stats returns the counters.
func (b *Budget) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.stats
	s.BudgetPages, s.ResidentPages = b.budget, b.resident
	return s
}
