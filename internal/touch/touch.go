// Package touch is how filemap's benchmarks fault pages in: one load a
// page, optionally timed, from threads of their own — the first touches
// whose cost the kernel's filemap_fault and filemap's are compared on.
package touch

import (
	"errors"
	"runtime"
	"sync"
	"time"

	"github.com/filemap/filemap/internal/sigbus"
)

// sink keeps the compiler from dropping the loads.
var sink byte

// Pages loads one byte of each page of pages (indices of pageSize-byte
// pages of mem), split into threads contiguous shares, each loaded by a
// goroutine locked to an OS thread of its own. If lat is not nil it gets
// each load's time, in pages' order. Pages returns the time from the start
// until the last share is done. A page that cannot be read (SIGBUS) stops
// its share and is an error naming its offset.
//
// A thread blocked in a page fault keeps its P: the Go scheduler cannot
// tell a fault from computation, and takes the P back only when it
// preempts the thread, every 10 ms or so. With fewer Ps than threads, the
// threads would take turns at faulting rather than fault at once, as the
// threads of a C program do; so Pages raises GOMAXPROCS to threads while
// it runs.
func Pages(mem []byte, pages []int64, pageSize int64, threads int, lat []time.Duration) (time.Duration, error) {
	if threads > runtime.GOMAXPROCS(0) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(threads))
	}
	sums := make([]byte, threads)
	errs := make([]error, threads)
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	for t := range threads {
		lo, hi := len(pages)*t/threads, len(pages)*(t+1)/threads
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			ready.Done()
			<-start
			errs[t] = sigbus.Check(mem, func() { sums[t] = load(mem, pages[lo:hi], pageSize, lat, lo) })
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	done.Wait()
	elapsed := time.Since(t0)
	for _, x := range sums {
		sink ^= x
	}
	return elapsed, errors.Join(errs...)
}

func load(mem []byte, pages []int64, pageSize int64, lat []time.Duration, at int) byte {
	var x byte
	if lat == nil {
		for _, p := range pages {
			x ^= mem[p*pageSize]
		}
		return x
	}
	for i, p := range pages {
		t0 := time.Now()
		x ^= mem[p*pageSize]
		lat[at+i] = time.Since(t0)
	}
	return x
}
