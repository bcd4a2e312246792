package remote

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// granted says whether w has its slot.
func granted(w *waiter) bool {
	select {
	case <-w.ready:
		return true
	default:
		return false
	}
}

// The slot kept for faults goes to a fault's own request, not to a
// readahead group that a sequential reader has caught up with and
// promoted: that group goes before bulk fetches but within their bounds,
// and a fault's request that arrives after it is served first.
func TestSlotsReserveForSmallDemand(t *testing.T) {
	cfg := Config{ChunkSize: testChunk, Parallel: 2}.withDefaults()
	s := newSlots(cfg)
	s.depth = newDepth(2) // two slots, one of them kept for demand
	var bulk, promoted, fault atomic.Bool
	promoted.Store(true)
	fault.Store(true)

	scan := s.enqueue(&bulk, 4*testChunk)
	if err := s.wait(context.Background(), scan); err != nil {
		t.Fatal(err)
	}
	group := s.enqueue(&promoted, 4*testChunk)
	if granted(group) {
		t.Fatal("a promoted group larger than a chunk took the slot kept for faults")
	}
	own := s.enqueue(&fault, testChunk/2)
	if !granted(own) {
		t.Fatal("a fault's own request waits behind a promoted group though the slot kept for faults is free")
	}

	s.release(testChunk/2, testChunk/2, time.Now()) // the fault's request ends
	if granted(group) {
		t.Fatal("a promoted group took the slot kept for faults when it was freed")
	}
	s.release(4*testChunk, 4*testChunk, time.Now()) // the scan's request ends
	if !granted(group) {
		t.Fatal("a promoted group does not get the slot a bulk fetch freed")
	}
	later := s.enqueue(&bulk, 4*testChunk)
	if granted(later) {
		t.Fatal("a bulk fetch took the slot kept for faults")
	}
}
