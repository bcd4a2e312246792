package remote

import (
	"math/bits"
	"sync"
)

// bufPool recycles fetch buffers in power-of-two size classes from one page
// up to one chunk (the top class is exactly a chunk, whatever its size), so
// that a steady stream of fetches allocates nothing and a partial-chunk
// fetch does not pin a whole chunk's memory. Buffers are kept by pointer so
// that Put does not allocate.
type bufPool struct {
	chunk   int
	classes []sync.Pool
}

func newBufPool(chunkSize int) *bufPool {
	return &bufPool{chunk: chunkSize, classes: make([]sync.Pool, class(chunkSize)+1)}
}

// class is the smallest size class that holds n bytes.
func class(n int) int {
	if n <= pageSize {
		return 0
	}
	return bits.Len(uint((n - 1) / pageSize))
}

// get returns a buffer of length n, at most a chunk.
func (p *bufPool) get(n int) *[]byte {
	k := class(n)
	if b, ok := p.classes[k].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, min(pageSize<<k, p.chunk))
	return &b
}

func (p *bufPool) put(b *[]byte) {
	if b != nil {
		p.classes[class(cap(*b))].Put(b)
	}
}
