package fault

import (
	"math/bits"
	"sync"
)

// bufPool lends read buffers in power-of-two classes of pages, so a
// one-page read never pays for zeroing a window-sized buffer.
type bufPool struct {
	classes [40]sync.Pool // class c holds buffers of 1<<c pages
}

func (p *bufPool) get(pages int64) *[]byte {
	c := bits.Len64(uint64(pages - 1))
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, (1<<c)*ps)
	return &b
}

func (p *bufPool) put(b *[]byte) {
	c := bits.Len64(uint64(len(*b)/ps - 1))
	p.classes[c].Put(b)
}
