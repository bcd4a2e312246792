// Package delayed closes what a lock's holder frees once the lock is
// released, as the kernel's delayed_fput defers a file's last release out
// of a context that may not sleep: closing may wait (for a cache's
// collapses, a remote store's requests), and everyone else who takes the
// lock would wait with it.
package delayed

import "sync"

// List is what was freed under a lock and is not closed yet. The lock
// protects it.
type List[T any] struct {
	freed []T
}

// Add queues x, freed under the lock, for Unlock to close.
func (l *List[T]) Add(x T) { l.freed = append(l.freed, x) }

// Unlock releases mu, the lock that protects l, and then closes with
// release, in the order they were added, what was added since the last
// Unlock.
func (l *List[T]) Unlock(mu sync.Locker, release func(T)) {
	freed := l.freed
	l.freed = nil
	mu.Unlock()
	for _, x := range freed {
		release(x)
	}
}
