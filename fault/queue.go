package fault

import (
	"container/list"
	"sync"

	"github.com/filemap/filemap/pagecache"
)

// diskQueue bounds the bytes of readahead reads in flight to local files,
// all of them together: what the block layer's request queue holds for
// readahead. A fault's own read joins the device queue behind every read
// already in it, and on a shared or throttled disk that queue drains
// slowly: with tens of MiB of a scan's readahead in flight, a fault
// elsewhere in the file waited hundreds of milliseconds for its 128 KiB.
// So readahead reads wait here for room, and a fault's own read never
// does (it is counted, so readahead yields to it).
//
// A readahead read whose fill a faulter comes to wait for stops waiting
// (promote). One read is always let through, however large, so the bound
// never stops a fill for good.
type diskQueue struct {
	limit int64 // bytes of readahead reads in flight

	mu       sync.Mutex // protects the fields below
	inflight int64      // bytes of reads in flight, demand reads included
	waiting  list.List  // of *diskWait, first come first served
	waits    uint64     // readahead reads that had to wait
}

type diskWait struct {
	f     *pagecache.Fill
	n     int64
	ready chan struct{}
}

func newDiskQueue(limit int64) *diskQueue { return &diskQueue{limit: limit} }

// start blocks until a read of n bytes for fill f may go to the disk: at
// once for a fault's own fill or one a faulter waits for, else when the
// readahead in flight leaves room for it. Every start is followed by one
// done(n). Waited is read under q.mu, which promote takes after the mark:
// a read either sees the mark or is found waiting by promote.
func (q *diskQueue) start(f *pagecache.Fill, n int64) {
	q.mu.Lock()
	if f.Page >= 0 || f.Waited() || q.inflight == 0 || q.waiting.Len() == 0 && q.inflight+n <= q.limit {
		q.inflight += n
		q.mu.Unlock()
		return
	}
	w := &diskWait{f: f, n: n, ready: make(chan struct{})}
	q.waiting.PushBack(w)
	q.waits++
	q.mu.Unlock()
	<-w.ready
}

// done says a read of n bytes has returned, and lets waiting ones go.
func (q *diskQueue) done(n int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.inflight -= n
	for e := q.waiting.Front(); e != nil; e = q.waiting.Front() {
		w := e.Value.(*diskWait)
		if q.inflight > 0 && q.inflight+w.n > q.limit {
			return
		}
		q.admitLocked(e)
	}
}

// promote lets fill f's waiting read, if any, go now: a faulter waits for
// it.
func (q *diskQueue) promote(f *pagecache.Fill) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for e := q.waiting.Front(); e != nil; e = e.Next() {
		if e.Value.(*diskWait).f == f {
			q.admitLocked(e)
			return
		}
	}
}

// stats are the bytes of reads in flight and the readahead reads that
// have had to wait.
func (q *diskQueue) stats() (inflight int64, waits uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.inflight, q.waits
}

// admitLocked sends the waiting read e to the disk. Called with q.mu held.
func (q *diskQueue) admitLocked(e *list.Element) {
	w := q.waiting.Remove(e).(*diskWait)
	q.inflight += w.n
	close(w.ready)
}
