package pagecache

import (
	"testing"
	"time"
)

// A write a faulter waits for goes before the readahead writes that were
// waiting for the file first; readahead writes go in turn after it.
func TestWriteLockUrgentFirst(t *testing.T) {
	var l writeLock
	l.lock(false) // a readahead write in progress
	order := make(chan string, 3)
	waitFor := func(urgent, late int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			u, n := l.waiting()
			if u == urgent && n == late {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting writers: %d urgent, %d late; want %d, %d", u, n, urgent, late)
			}
			time.Sleep(time.Millisecond)
		}
	}
	writer := func(name string, urgent bool) {
		l.lock(urgent)
		order <- name
		l.unlock()
	}
	go writer("readahead 1", false)
	waitFor(0, 1)
	go writer("readahead 2", false)
	waitFor(0, 2)
	go writer("fault", true)
	waitFor(1, 2)
	l.unlock()
	if first := <-order; first != "fault" {
		t.Fatalf("first write after the one in progress: %s, want the fault's", first)
	}
	for range 2 {
		if w := <-order; w == "fault" {
			t.Fatalf("the fault's write went twice")
		}
	}
}

// A large write is put in pieces, each under the lock on its own, so that
// an urgent write waits for one piece, not the whole: the pieces and the
// bytes they leave are checked through the file.
func TestWritePagesPieces(t *testing.T) {
	const npages = 3*writePiece/PageSize + 5
	o := mustNew(t, npages*PageSize)
	data := make([]byte, npages*PageSize)
	for i := range data {
		data[i] = byte(i / PageSize)
	}
	if err := o.WritePages(0, data); err != nil {
		t.Fatal(err)
	}
	if err := o.WritePagesUrgent(npages-1, data[:PageSize]); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := o.File().ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for p := int64(0); p < npages-1; p++ {
		if got[p*PageSize] != byte(p) || got[(p+1)*PageSize-1] != byte(p) {
			t.Fatalf("page %d reads %d..%d, want %d", p, got[p*PageSize], got[(p+1)*PageSize-1], byte(p))
		}
	}
	if got[(npages-1)*PageSize] != 0 {
		t.Fatalf("the urgent write of page %d reads %d, want 0", npages-1, got[(npages-1)*PageSize])
	}
	if err := o.WritePages(0, data[:100]); err == nil {
		t.Error("a write of part of a page succeeded")
	}
}

// A fill a faulter waits for says so, so that its writes go first; one
// nobody waits for does not.
func TestFillWaited(t *testing.T) {
	o := mustNew(t, 16*PageSize)
	fs := o.Claim(0, 8)
	if len(fs) != 1 || fs[0].Waited() {
		t.Fatalf("Claim(0, 8) = %d fills, waited %v; want one nobody waits for", len(fs), len(fs) > 0 && fs[0].Waited())
	}
	f := fs[0]
	done := f.Wait()
	if !f.Waited() {
		t.Error("a fill waited for does not say so")
	}
	o.End(f, 0, 8, nil)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait's channel was not closed when the fill ended")
	}
}
