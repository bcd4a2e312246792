package pagecache

// table is the page-state table: two bits a page, in chunks allocated on
// first use, so a sparse 1 TiB object costs the chunk directory (64 KiB) and
// 8 KiB for each 128 MiB that has ever been touched. A chunk also keeps two
// bits per huge extent (HugePages pages): the extent is one huge folio in
// the cache file, and the extent waits for the collapser. They cost 16 bytes
// a chunk, and an extent only has them once its pages were written, so they
// live in chunks that exist already.
type table struct {
	chunks []*chunk
}

const (
	chunkShift = 15 // pages per chunk: 1<<15 = 128 MiB of object
	chunkPages = 1 << chunkShift
	chunkWords = chunkPages * 2 / 64

	extentsPerChunk = chunkPages / HugePages // 64: one bit each in a uint64
	extentWords     = HugePages * 2 / 64     // state words of one extent

	// allUptodate is a state word whose 32 pages are all Uptodate.
	allUptodate = uint64(0xAAAAAAAAAAAAAAAA)
)

// The bit tricks above assume these.
var (
	_ = [1]struct{}{}[Uptodate-2]           // Uptodate is binary 10 in each 2-bit field
	_ = [1]struct{}{}[extentsPerChunk-64]   // one uint64 holds a chunk's extent bits
	_ = [1]struct{}{}[chunkPages%HugePages] // extents never straddle chunks
)

type chunk struct {
	states [chunkWords]uint64
	huge   uint64 // bit i: extent i of the chunk is one huge folio
	queued uint64 // bit i: extent i is in the collapser's queue
}

func newTable(npages int64) table {
	return table{chunks: make([]*chunk, (npages+chunkPages-1)>>chunkShift)}
}

func (t *table) get(page int64) State {
	c := t.chunks[page>>chunkShift]
	if c == nil {
		return Absent
	}
	i := page & (chunkPages - 1)
	return State(c.states[i/32] >> (2 * (i % 32)) & 3)
}

func (t *table) set(page int64, s State) {
	c := t.chunks[page>>chunkShift]
	if c == nil {
		if s == Absent {
			return
		}
		c = new(chunk)
		t.chunks[page>>chunkShift] = c
	}
	i := page & (chunkPages - 1)
	shift := 2 * (i % 32)
	c.states[i/32] = c.states[i/32]&^(3<<shift) | uint64(s)<<shift
}

// extent returns the chunk holding huge extent x and x's bit in it; the
// chunk is nil if no page of it was ever written.
func (t *table) extent(x int64) (*chunk, uint64) {
	return t.chunks[x*HugePages>>chunkShift], 1 << (x % extentsPerChunk)
}

// extentUptodate reports whether every page of huge extent x is Uptodate:
// none absent, held back as a marker, in flight or in error. It compares
// the extent's 16 state words, not its 512 pages one by one.
func (t *table) extentUptodate(x int64) bool {
	c, _ := t.extent(x)
	if c == nil {
		return false
	}
	w := (x % extentsPerChunk) * extentWords
	for _, v := range c.states[w : w+extentWords] {
		if v != allUptodate {
			return false
		}
	}
	return true
}

func (t *table) isHuge(x int64) bool {
	c, bit := t.extent(x)
	return c != nil && c.huge&bit != 0
}

func (t *table) isQueued(x int64) bool {
	c, bit := t.extent(x)
	return c != nil && c.queued&bit != 0
}

// setHuge and setQueued change an extent's bits. Setting one needs the
// extent's chunk, which exists since its pages were written.
func (t *table) setHuge(x int64, on bool) {
	if c, bit := t.extent(x); c != nil {
		c.huge = c.huge&^bit | bitIf(on, bit)
	}
}

func (t *table) setQueued(x int64, on bool) {
	if c, bit := t.extent(x); c != nil {
		c.queued = c.queued&^bit | bitIf(on, bit)
	}
}

func bitIf(on bool, bit uint64) uint64 {
	if on {
		return bit
	}
	return 0
}

// bytes is the memory the table itself holds.
func (t *table) bytes() int64 {
	n := int64(len(t.chunks)) * 8
	for _, c := range t.chunks {
		if c != nil {
			n += int64(chunkWords*8 + 16)
		}
	}
	return n
}
