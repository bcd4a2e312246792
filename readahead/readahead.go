// Package readahead is filemap's file_ra_state and mm/readahead.c: it decides
// which pages a fault reads besides the one it needs. It does no I/O.
package readahead

import "fmt"

// DefaultPages is the kernel's VM_READAHEAD_PAGES: 128 KiB of 4 KiB pages.
const DefaultPages = 32

// Advice is what madvise(2) tells the kernel about an access pattern.
type Advice uint8

const (
	Normal     Advice = iota // MADV_NORMAL: read-around
	Random                   // MADV_RANDOM: the faulting page alone
	Sequential               // MADV_SEQUENTIAL: a doubled window ahead
	WillNeed                 // MADV_WILLNEED: read the range now
	DontNeed                 // MADV_DONTNEED: drop the range
)

var adviceNames = [...]string{"normal", "random", "sequential", "willneed", "dontneed"}

func (a Advice) String() string {
	if int(a) < len(adviceNames) {
		return adviceNames[a]
	}
	return fmt.Sprintf("Advice(%d)", uint8(a))
}

// ParseAdvice is the inverse of Advice.String.
func ParseAdvice(s string) (Advice, error) {
	for i, n := range adviceNames {
		if n == s {
			return Advice(i), nil
		}
	}
	return 0, fmt.Errorf("unknown advice %q (want normal, random, sequential, willneed or dontneed)", s)
}

// Window is the pages [Start, End) a miss reads.
type Window struct{ Start, End int64 }

// Len is the number of pages in the window.
func (w Window) Len() int64 { return w.End - w.Start }

// Around is do_sync_mmap_readahead's read-around for a miss at index: the
// raPages pages centred on it, [index − ra/2, index + ra/2), clipped to the
// object's npages. Random advice or raPages ≤ 1 reads the page alone;
// sequential advice reads a doubled window forward from index.
func Around(index, raPages, npages int64, advice Advice) Window {
	var w Window
	switch {
	case advice == Random || raPages <= 1:
		w = Window{index, index + 1}
	case advice == Sequential:
		w = Window{index, index + 2*raPages}
	default:
		w = Window{index - raPages/2, index - raPages/2 + raPages}
	}
	w.Start, w.End = max(w.Start, 0), min(w.End, npages)
	return w
}
