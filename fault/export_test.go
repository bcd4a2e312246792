package fault

// Test-only views of the fault path's internals, kept out of the package
// proper as net/http keeps its own.

// waitingLen is how many readahead reads wait in the disk queue.
func (q *diskQueue) waitingLen() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.waiting.Len()
}

// inflightNow is the bytes of reads in flight to local files.
func (q *diskQueue) inflightNow() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.inflight
}
