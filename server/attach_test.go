package server

import (
	"math"
	"testing"
)

// pageRange clamps a client's byte range to the object, whatever its sign,
// size or overflow: the pages of the range that lie in the object, or
// none.
func TestPageRange(t *testing.T) {
	const size = 10*ps + 1 // 11 pages, the last one short
	const huge = int64(1) << 62
	for _, c := range []struct {
		off, n     int64
		start, end int64
	}{
		{0, size, 0, 11},
		{ps, 1, 1, 2},
		{ps - 1, 2, 0, 2},
		{0, 0, 0, 0},
		{0, -1, 0, 0},
		{-1, 1, 0, 0},
		{-1, 2, 0, 1},
		{-huge, huge, 0, 0},
		{-huge, huge + ps, 0, 1},
		{0, huge, 0, 11},
		{ps, math.MaxInt64, 1, 11},               // off+n overflows
		{math.MaxInt64, math.MaxInt64, 0, 0},     // overflows, and starts past the end
		{math.MinInt64, math.MaxInt64, 0, 0},     // ends at -1
		{math.MinInt64 + 1, math.MaxInt64, 0, 0}, // ends at 0
		{-ps, math.MaxInt64, 0, 11},
		{size, 1, 0, 0},
		{size - 1, huge, 10, 11},
		{huge, huge, 0, 0},
	} {
		start, end := pageRange(c.off, c.n, size)
		if start < end && (start != c.start || end != c.end) || start >= end && c.start < c.end {
			t.Errorf("pageRange(%d, %d, %d) = [%d, %d), want [%d, %d)", c.off, c.n, int64(size), start, end, c.start, c.end)
		}
	}
}
