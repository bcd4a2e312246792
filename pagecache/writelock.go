package pagecache

import "sync"

// writePiece bounds the bytes one pwrite puts into a cache file while it
// holds the file's write lock: a write a faulter waits for waits for at
// most one such piece of a readahead write (on this VM, where each new
// page is a fault in the host, 256 KiB took up to 1.3 ms).
const writePiece = 64 * PageSize

// writeLock serialises the writes to one cache file, as the kernel's
// inode lock would anyway (and its waiters spin while the holder copies,
// which on two CPUs starved the holder), and lets writes that a faulter
// waits for go before the readahead writes queued ahead of them: a fault
// never waits behind an unrelated large transfer.
type writeLock struct {
	mu             sync.Mutex // protects the fields below
	urgentQ, lateQ sync.Cond  // on mu
	held           bool
	urgent, late   int // writers waiting
}

func (l *writeLock) lock(urgent bool) {
	l.mu.Lock()
	if l.urgentQ.L == nil {
		l.urgentQ.L, l.lateQ.L = &l.mu, &l.mu
	}
	if urgent {
		l.urgent++
		for l.held {
			l.urgentQ.Wait()
		}
		l.urgent--
	} else {
		l.late++
		for l.held || l.urgent > 0 {
			l.lateQ.Wait()
		}
		l.late--
	}
	l.held = true
	l.mu.Unlock()
}

func (l *writeLock) unlock() {
	l.mu.Lock()
	l.held = false
	switch {
	case l.urgent > 0:
		l.urgentQ.Signal()
	case l.late > 0:
		l.lateQ.Signal()
	}
	l.mu.Unlock()
}
