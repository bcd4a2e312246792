package fault

import (
	"fmt"
	"sync"
	"testing"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/pagecache"
)

// Readahead reads wait for room in the disk queue, in the order they came,
// and never have more than the bound in flight; one read larger than the
// bound still goes, alone.
func TestDiskQueueBound(t *testing.T) {
	q := newDiskQueue(2 * ps)
	ra := func() *pagecache.Fill { return &pagecache.Fill{Page: -1} }
	q.start(ra(), ps)
	q.start(ra(), ps)
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			q.start(ra(), ps)
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
		})
		testutil.WaitFor(t, fmt.Sprintf("read %d to queue", i), func() bool { return q.waitingLen() == i+1 })
	}
	for i := range 3 {
		q.done(ps) // room for one
		testutil.WaitFor(t, "a read to leave the queue", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == i+1 })
		if order[i] != i {
			t.Errorf("read %d left the queue in place %d", order[i], i)
		}
		if n := q.waitingLen(); n != 2-i {
			t.Errorf("%d reads queued after %d left, want %d", n, i+1, 2-i)
		}
	}
	wg.Wait()
	if got := q.inflightNow(); got != 2*ps {
		t.Errorf("%d bytes in flight, want %d", got, 2*ps)
	}
	q.done(ps)
	q.done(ps)
	q.start(ra(), 10*ps) // larger than the bound, with nothing in flight
	q.done(10 * ps)
	if got, waits := q.stats(); got != 0 || waits != 3 {
		t.Errorf("%d bytes in flight once all are done, %d reads waited; want 0 and 3", got, waits)
	}
}

// A fault's own read, and the read of a fill a faulter waits for, never
// wait; marking a fill waited and promoting it lets its queued read go.
func TestDiskQueueDemandAndPromote(t *testing.T) {
	q := newDiskQueue(ps)
	q.start(&pagecache.Fill{Page: -1}, ps)
	q.start(&pagecache.Fill{Page: 7}, ps) // a fault's fill: past the bound at once
	waited := &pagecache.Fill{Page: -1}
	waited.Wait()
	q.start(waited, ps) // already waited for: no queueing
	queued := &pagecache.Fill{Page: -1}
	went := make(chan struct{})
	go func() {
		q.start(queued, ps)
		close(went)
	}()
	testutil.WaitFor(t, "the readahead read to queue", func() bool { return q.waitingLen() == 1 })
	queued.Wait()
	q.promote(queued)
	<-went // without promote, this waits for ever
	if got := q.inflightNow(); got != 4*ps {
		t.Errorf("%d bytes in flight, want %d", got, 4*ps)
	}
}

// With the disk queue full of a scan's readahead, held at the store, a
// fault elsewhere is served, and a fault on a page whose readahead fill is
// queued moves that fill's read to the store at once. Should either wait
// behind the readahead, this test hangs until its timeout.
func TestFaultPassesDiskQueue(t *testing.T) {
	const npages = 8192
	g := newRig(t, npages, Config{ReadBuffers: 8192 * ps, ReadaheadInflight: chunkPages * ps, RetryBackoff: 1})
	g.st.gateLo, g.st.gateHi = 0, 4096
	g.h.WillNeed(g.obj, 0, 4096) // 16 fills of chunkPages, all with buffers
	first := <-g.st.arrived      // one of the fills, whichever had its goroutine run first
	testutil.WaitFor(t, "the other readahead reads to queue", func() bool { return g.h.disk.waitingLen() == 15 })

	g.fault(6000) // not under the readahead: its own read
	g.wg.Wait()
	if !g.tgt.woken[g.addr(6000)] {
		t.Error("the faulter of page 6000 was not woken")
	}

	fill := int64(2048)
	if first == fill {
		fill = 1024
	}
	g.fault(fill + 52) // in a queued fill
	if p := <-g.st.arrived; p != fill {
		t.Errorf("the read that reached the store after the fault is at page %d, want %d", p, fill)
	}
	if n := g.h.disk.waitingLen(); n != 14 {
		t.Errorf("%d readahead reads queued after the promotion, want 14", n)
	}
	close(g.st.gate)
	g.wg.Wait()
	if !g.tgt.woken[g.addr(fill+52)] {
		t.Errorf("the faulter of page %d was not woken", fill+52)
	}
	g.settle()
	g.check(t)
	if got := g.h.disk.inflightNow(); got != 0 {
		t.Errorf("%d bytes in the disk queue once settled", got)
	}
}
