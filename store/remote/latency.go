package remote

import (
	"slices"
	"sync"
	"time"
)

// latencies keeps the most recent request latencies of one size class,
// for the adaptive hedge delay. Small and whole-chunk requests are kept
// apart: a chunk's transfer time is not a straggling small request.
type latencies struct {
	mu   sync.Mutex // protects the fields below
	ring [64]time.Duration
	n    int // samples in ring
	next int
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.ring[l.next] = d
	l.next = (l.next + 1) % len(l.ring)
	l.n = min(l.n+1, len(l.ring))
	l.mu.Unlock()
}

// median returns the median of the recent samples, and false when there
// are too few to tell a straggler.
func (l *latencies) median() (time.Duration, bool) {
	var buf [len(latencies{}.ring)]time.Duration
	l.mu.Lock()
	s := buf[:l.n]
	copy(s, l.ring[:l.n])
	l.mu.Unlock()
	if len(s) < hedgeMinSamples {
		return 0, false
	}
	slices.Sort(s)
	return s[len(s)/2], true
}
