package pagecache

// table is the page-state table: two bits a page, in chunks allocated on
// first use, so a sparse 1 TiB object costs the chunk directory (64 KiB) and
// 8 KiB for each 128 MiB that has ever been touched.
type table struct {
	chunks []*chunk
}

const (
	chunkShift = 15 // pages per chunk: 1<<15 = 128 MiB of object
	chunkPages = 1 << chunkShift
	chunkWords = chunkPages * 2 / 64
)

type chunk [chunkWords]uint64

func newTable(npages int64) table {
	return table{chunks: make([]*chunk, (npages+chunkPages-1)>>chunkShift)}
}

func (t *table) get(page int64) State {
	c := t.chunks[page>>chunkShift]
	if c == nil {
		return Absent
	}
	i := page & (chunkPages - 1)
	return State(c[i/32] >> (2 * (i % 32)) & 3)
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
	c[i/32] = c[i/32]&^(3<<shift) | uint64(s)<<shift
}

// bytes is the memory the table itself holds.
func (t *table) bytes() int64 {
	n := int64(len(t.chunks)) * 8
	for _, c := range t.chunks {
		if c != nil {
			n += chunkWords * 8
		}
	}
	return n
}
