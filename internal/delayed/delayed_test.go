package delayed

import (
	"slices"
	"sync"
	"testing"
)

// What is freed under the lock is closed after the lock is released, each
// once, in the order it was freed; an Unlock with nothing freed since the
// last closes nothing.
func TestUnlockClosesAfterReleasing(t *testing.T) {
	var mu sync.Mutex
	var l List[int]
	var closed []int
	release := func(x int) {
		if !mu.TryLock() {
			t.Errorf("%d closed with the lock held", x)
			return
		}
		mu.Unlock()
		closed = append(closed, x)
	}
	mu.Lock()
	l.Add(1)
	l.Add(2)
	l.Unlock(&mu, release)
	if want := []int{1, 2}; !slices.Equal(closed, want) {
		t.Fatalf("closed %v, want %v", closed, want)
	}
	mu.Lock()
	l.Unlock(&mu, release)
	mu.Lock()
	l.Add(3)
	l.Unlock(&mu, release)
	if want := []int{1, 2, 3}; !slices.Equal(closed, want) {
		t.Errorf("closed %v after two more Unlocks, want %v", closed, want)
	}
}
