package firecracker

import "sync/atomic"

// bitset is a fixed set of bits read and written without a lock: the fault
// path asks "installed?" and "removed?" of a page on every message.
type bitset []atomic.Uint64

func newBitset(n int64) bitset { return make(bitset, (n+63)/64) }

func (b bitset) get(i int64) bool {
	return i >= 0 && i/64 < int64(len(b)) && b[i/64].Load()&(1<<(i%64)) != 0
}

func (b bitset) set(i int64) {
	if i >= 0 && i/64 < int64(len(b)) {
		b[i/64].Or(1 << (i % 64))
	}
}

func (b bitset) clear(i int64) {
	if i >= 0 && i/64 < int64(len(b)) {
		b[i/64].And(^uint64(1 << (i % 64)))
	}
}
