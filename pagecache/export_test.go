package pagecache

// Test-only views of the cache's internals, kept out of the package
// proper as net/http keeps its own.

// waiting is how many writers wait for the write lock, urgent and late.
func (l *writeLock) waiting() (urgent, late int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.urgent, l.late
}
