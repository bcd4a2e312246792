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
package reclaim

import (
	"container/list"
	"sync"
)

// Cache is what reclaim evicts from: the page cache of one object.
type Cache interface {
	// Punch drops resident pages of [start, end) and says how many.
	Punch(start, end int64) (int64, error)
}

// Policy names an eviction policy.
type Policy string

const (
	S3FIFO Policy = "s3fifo" // the default: scan-resistant, refault-aware
	FIFO   Policy = "fifo"   // UMap's: the oldest fill goes first
)

// Stats are reclaim's counters.
type Stats struct {
	BudgetPages   int64
	ResidentPages int64 // committed and reserved
	MaxResident   int64 // the most ResidentPages has been
	Evictions     uint64
	EvictedPages  uint64
	Refaults      uint64 // misses on pages whose ghost was remembered
}

type extent struct {
	c          Cache
	start, end int64
	pages      int64 // pages it made resident
	main       bool
	elem       *list.Element
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
	mu       sync.Mutex
	policy   Policy
	budget   int64 // pages; 0 means no limit
	resident int64
	small    list.List // of *extent, oldest first
	main     list.List
	smallPg  int64
	ghost    map[ghostKey]*list.Element
	ghostQ   list.List // of ghostKey, oldest first
	stats    Stats
}

// New makes a budget of the given pages under policy (S3FIFO if empty).
// A budget of 0 pages is no limit: pages are only counted.
func New(pages int64, policy Policy) *Budget {
	if policy == "" {
		policy = S3FIFO
	}
	return &Budget{policy: policy, budget: pages, ghost: make(map[ghostKey]*list.Element)}
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
func (b *Budget) Commit(c Cache, start, end, n, reserved int64, refault bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.resident -= reserved - n
	if n <= 0 {
		return
	}
	e := &extent{c: c, start: start, end: end, pages: n}
	if refault && b.policy == S3FIFO {
		e.main = true
		e.elem = b.main.PushBack(e)
		return
	}
	e.elem = b.small.PushBack(e)
	b.smallPg += n
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

// drop punches an extent's pages out of its cache.
func (b *Budget) drop(e *extent) {
	e.c.Punch(e.start, e.end) // pages in flight stay; a failed punch leaves pages we no longer count
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
