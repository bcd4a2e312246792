package remote

import (
	"math/bits"
	"sync"
)

// bufPool recycles fetch buffers in power-of-two size classes from one page
// up to one chunk (the top class is exactly a chunk, whatever its size), and
// buffers for a group's request of several chunks in a class of their own
// (exactly MaxRequest), so that a steady stream of fetches allocates nothing
// and a partial-chunk fetch does not pin a whole chunk's memory. Buffers are
// kept by pointer so that Put does not allocate.
type bufPool struct {
	chunk   int
	group   int
	classes []sync.Pool
	groups  sync.Pool
}

func newBufPool(chunkSize, maxRequest int) *bufPool {
	return &bufPool{chunk: chunkSize, group: maxRequest, classes: make([]sync.Pool, class(chunkSize)+1)}
}

// class is the smallest size class that holds n bytes.
func class(n int) int {
	if n <= pageSize {
		return 0
	}
	return bits.Len(uint((n - 1) / pageSize))
}

// get returns a buffer of length n, at most MaxRequest.
func (p *bufPool) get(n int) *[]byte {
	if n > p.chunk {
		if b, ok := p.groups.Get().(*[]byte); ok {
			*b = (*b)[:n]
			return b
		}
		b := make([]byte, n, p.group)
		return &b
	}
	k := class(n)
	if b, ok := p.classes[k].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, min(pageSize<<k, p.chunk))
	return &b
}

func (p *bufPool) put(b *[]byte) {
	switch {
	case b == nil:
	case cap(*b) > p.chunk:
		p.groups.Put(b)
	default:
		p.classes[class(cap(*b))].Put(b)
	}
}
