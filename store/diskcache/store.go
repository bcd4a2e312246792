package diskcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/remote"
)

// Wrap returns a store that serves st's bytes through the cache, and owns
// st: its Close closes st. Stores of equal Key and Version share their
// cached chunks, on disk and in flight.
//
// Wrapping a version of a key supersedes the key's other versions: those
// nobody uses are deleted now, the chunks of the others are evicted before
// any other and their files deleted when their last store closes.
//
// The cache is an optimisation, never a new way to fail: if the object's
// files cannot be made (or the Cache is closed, or the object is empty) Wrap
// logs why and returns st itself.
func (c *Cache) Wrap(st store.Store) store.Store {
	key, version, size := st.Key(), st.Version(), st.Size()
	if size <= 0 {
		return st
	}
	if len(key)+len(version) > maxIdentity {
		c.log.Warn("diskcache: object key and version too long to cache", "key", key[:min(len(key), 200)])
		return st
	}
	stem := stemOf(key, version)
	h := header{key: key, version: version, size: size, chunkSize: c.chunkSize}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return st
	}
	o := c.objects[stem]
	if o != nil && o.size != size {
		// Same key and version, another size: one of the two stores is
		// wrong about its object. Never mix them; keep the one in use.
		if !o.idle() {
			c.log.Warn("diskcache: object opened with another size than the cached one; not caching it",
				"key", key, "version", version, "size", size, "cached_size", o.size)
			return st
		}
		c.forgetLocked(o)
		o = nil
	}
	if o == nil {
		var err error
		if o, err = c.createLocked(stem, h); err != nil {
			c.stats.writeErrors.Add(1)
			c.log.Warn("diskcache: cannot create cache files; reading the object uncached", "key", key, "err", err)
			return st
		}
		c.objects[stem] = o
	} else if err := o.openFiles(true); err != nil {
		c.stats.writeErrors.Add(1)
		c.log.Warn("diskcache: cannot open cache files; reading the object uncached", "key", key, "file", o.dataPath, "err", err)
		if o.idle() {
			c.forgetLocked(o)
		}
		return st
	}
	o.users++
	c.setStaleLocked(o, false)
	for _, other := range c.objects {
		if other != o && other.key == key {
			if other.idle() {
				c.forgetLocked(other)
			} else {
				c.setStaleLocked(other, true)
			}
		}
	}
	cs := &cachedStore{c: c, o: o, st: st}
	if h, ok := st.(holder); ok {
		return &holdingStore{cachedStore: cs, h: h}
	}
	return cs
}

// setStaleLocked moves o's chunks to the list of its new standing. Called with
// mu held.
func (c *Cache) setStaleLocked(o *object, stale bool) {
	if o.stale == stale {
		return
	}
	o.stale = stale
	to := c.listFor(o)
	for _, ch := range o.chunks {
		if ch.list != nil {
			ch.list.remove(ch)
			to.pushFront(ch)
		}
	}
}

// errClosed fails reads of a cachedStore after its Close.
var errClosed = errors.New("diskcache: read of a closed store")

// cachedStore is a store.Store read through a Cache.
type cachedStore struct {
	c      *Cache
	o      *object
	st     store.Store
	closed atomic.Bool
	once   sync.Once
}

var _ store.Store = (*cachedStore)(nil)

func (s *cachedStore) Size() int64 { return s.o.size }
func (s *cachedStore) Key() string { return s.o.key }

// ReadaheadBytes passes on what the store below asks for: misses go to it.
func (s *cachedStore) ReadaheadBytes() int64 {
	if r, ok := s.st.(store.Readaheader); ok {
		return r.ReadaheadBytes()
	}
	return 0
}
func (s *cachedStore) Version() string { return s.o.version }

// TakePrimed passes on to the store below (store.Primed).
func (s *cachedStore) TakePrimed() (int64, []byte) {
	if p, ok := s.st.(store.Primed); ok {
		return p.TakePrimed()
	}
	return 0, nil
}

// Prime passes on to the store below (store.Primed).
func (s *cachedStore) Prime(off int64, b []byte) {
	if p, ok := s.st.(store.Primed); ok {
		p.Prime(off, b)
	}
}

// Idle passes on to the store below: its memory, not the disk cache's
// files, is what an idle object gives back.
func (s *cachedStore) Idle() {
	if i, ok := s.st.(store.Idler); ok {
		i.Idle()
	}
}

// Prefetch passes a readahead window on to the store below, if it plans
// its requests (store.Prefetcher), less the chunks this cache will serve:
// those on disk, in memory or being loaded. Those left are the misses the
// window's reads will ask the store below for, a chunk at a time.
func (s *cachedStore) Prefetch(ctx context.Context, ranges [][2]int64) {
	p, ok := s.st.(store.Prefetcher)
	if !ok || s.closed.Load() {
		return
	}
	if miss := s.c.misses(s.o, ranges); len(miss) > 0 {
		p.Prefetch(ctx, miss)
	}
}

// misses is the chunks of ranges that o has neither on disk, nor in
// memory, nor in flight, as byte ranges, adjacent ones merged.
func (c *Cache) misses(o *object, ranges [][2]int64) [][2]int64 {
	cs := c.chunkSize
	c.mu.Lock()
	defer c.mu.Unlock()
	var miss [][2]int64
	for _, r := range ranges {
		for ci := max(r[0], 0) / cs; ci*cs < min(r[1], o.size); ci++ {
			if o.chunks[ci] != nil || o.flights[ci] != nil || c.mem.has(o, ci) {
				continue
			}
			lo, hi := ci*cs, ci*cs+o.chunkLen(ci)
			switch n := len(miss); {
			case n > 0 && miss[n-1][1] == lo:
				miss[n-1][1] = hi
			case n > 0 && miss[n-1][1] > lo: // a chunk two ranges share
			default:
				miss = append(miss, [2]int64{lo, hi})
			}
		}
	}
	return miss
}

// holder is a store that fetches planned byte ranges ahead of the reads
// that want them and keeps the bytes until released: store/remote's Store,
// which a VM restore's replay holds chunk by chunk.
type holder interface {
	Hold(ranges [][2]int64) *remote.Held
}

// holdingStore is a cachedStore over a holder, and a holder itself, so
// that a replay through the disk cache plans its fetches as it does
// without one, rather than reading page runs one request at a time.
type holdingStore struct {
	*cachedStore
	h holder
}

// Hold holds, in the store below, the whole chunks of ranges this cache
// lacks: a miss is read from below, and written to disk, a whole chunk at
// a time, which a held whole chunk serves with no request of its own.
// Chunks on disk need no hold: the replay's reads come from here.
func (s *holdingStore) Hold(ranges [][2]int64) *remote.Held {
	return s.h.Hold(s.c.misses(s.o, ranges))
}

// ChunkSize is the unit in which this cache, and so a replay through it,
// fetches.
func (s *holdingStore) ChunkSize() int64 { return s.c.chunkSize }

// Close closes the wrapped store. The object's cached chunks stay on disk.
func (s *cachedStore) Close() error {
	s.once.Do(func() {
		s.closed.Store(true)
		c := s.c
		c.mu.Lock()
		s.o.users--
		if s.o.users == 0 {
			c.mem.drop(s.o) // nobody will read them from memory
			c.retireLocked(s.o)
		}
		c.mu.Unlock()
	})
	return s.st.Close()
}

// ReadAt reads like an io.ReaderAt: all of p, or the bytes up to Size and
// io.EOF, or an error naming the object and offset.
func (s *cachedStore) ReadAt(p []byte, off int64) (int, error) {
	return s.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt whose misses read the store below within ctx
// (store.ContextReader): a fault's deadline reaches the requests they make.
func (s *cachedStore) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if s.closed.Load() {
		return 0, fmt.Errorf("%s: read %d bytes at offset %d: %w", s.o.key, len(p), off, errClosed)
	}
	if off < 0 {
		return 0, fmt.Errorf("%s: read %d bytes at negative offset %d", s.o.key, len(p), off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= s.o.size {
		return 0, io.EOF
	}
	want := p[:min(int64(len(p)), s.o.size-off)]
	n, err := s.read(ctx, want, off)
	if err != nil {
		return n, err
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// read fills p, which lies within the object, chunk by chunk. The chunks of
// a read that spans several are loaded concurrently (readParallel at a
// time), so that a readahead window of misses costs one round trip.
func (s *cachedStore) read(ctx context.Context, p []byte, off int64) (int, error) {
	cs := s.c.chunkSize
	first, last := off/cs, (off+int64(len(p))-1)/cs
	part := func(ci int64) []byte { // the bytes of p in chunk ci
		lo, hi := max(off, ci*cs), min(off+int64(len(p)), (ci+1)*cs)
		return p[lo-off : hi-off]
	}
	scattered := s.c.scattered(s.o, off, int64(len(p)))
	copyChunk := func(ci int64) error {
		lo := max(off, ci*cs) - ci*cs
		if scattered && s.c.readPart(s.o, ci, lo, part(ci)) {
			return nil
		}
		buf, err := s.c.load(ctx, s, ci)
		if err != nil {
			return err
		}
		copy(part(ci), buf[lo:])
		return nil
	}
	if first == last {
		if err := copyChunk(first); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	errs := make([]error, last-first+1)
	sem := make(chan struct{}, readParallel)
	var wg sync.WaitGroup
	for ci := first; ci <= last; ci++ {
		sem <- struct{}{}
		wg.Go(func() {
			errs[ci-first] = copyChunk(ci)
			<-sem
		})
	}
	wg.Wait()
	n := 0
	for i, err := range errs {
		if err != nil {
			return n, err
		}
		n += len(part(first + int64(i)))
	}
	return n, nil
}

// load returns chunk ci's bytes: from memory, from another read's load in
// progress, from disk if present and intact, else from the wrapped store.
// The returned buffer must not be written.
func (c *Cache) load(ctx context.Context, s *cachedStore, ci int64) ([]byte, error) {
	o := s.o
	c.mu.Lock()
	if c.closed || o.gone || o.openFiles(true) != nil {
		// Only a read racing with Close gets here: serve it uncached.
		c.mu.Unlock()
		return c.fetch(ctx, s, ci, make([]byte, o.chunkLen(ci)))
	}
	if buf := c.mem.get(o, ci); buf != nil {
		if ch := o.chunks[ci]; ch != nil {
			c.touch(ch)
		}
		c.mu.Unlock()
		c.stats.memHits.Add(1)
		return buf, nil
	}
	if f := o.flights[ci]; f != nil {
		f.waiters++
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("diskcache: %s: waiting for the chunk at offset %d: %w", o.key, ci*c.chunkSize, context.Cause(ctx))
		}
		if f.part { // a read of a few blocks, with no chunk to share
			return c.load(ctx, s, ci)
		}
		return f.buf, f.err
	}
	f := &flight{done: make(chan struct{})}
	o.flights[ci] = f
	o.active++
	ch := o.chunks[ci]
	if ch != nil {
		ch.list.remove(ch) // in use: not to be evicted while we read it
		c.io.Add(1)
	}
	c.mu.Unlock()

	buf := alignedBuf(o.chunkLen(ci))
	if ch != nil {
		err := c.readBlocks(o, ch, 0, buf)
		c.mu.Lock()
		c.io.Done()
		if err == nil {
			c.listFor(o).pushFront(ch)
			c.finishLocked(o, ci, f, buf, nil)
			c.mu.Unlock()
			return buf, nil
		}
		c.dropCorruptLocked(o, ch, err)
		c.mu.Unlock()
	}
	if _, err := c.fetch(ctx, s, ci, buf); err != nil {
		c.mu.Lock()
		c.finishLocked(o, ci, f, nil, err)
		c.mu.Unlock()
		return nil, err
	}
	c.mu.Lock()
	c.rememberLocked(o, ci, buf)
	f.buf = buf
	close(f.done) // readers need not wait for the disk write
	c.mu.Unlock()
	c.store(o, ci, buf)
	c.mu.Lock()
	c.finishLocked(o, ci, f, buf, nil)
	c.mu.Unlock()
	return buf, nil
}

// fetch reads chunk ci from the wrapped store into buf, within ctx.
func (c *Cache) fetch(ctx context.Context, s *cachedStore, ci int64, buf []byte) ([]byte, error) {
	c.stats.misses.Add(1)
	off := ci * c.chunkSize
	n, err := store.ReadFullContext(ctx, s.st, buf, off)
	if err == nil && n < len(buf) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, fmt.Errorf("diskcache: %s: read chunk of %d bytes at offset %d: %w", s.o.key, len(buf), off, err)
	}
	return buf, nil
}

// finishLocked ends flight f of chunk ci: publishes its outcome if that has not
// been done, unlists it, and lets the object's files close if nobody uses
// them. Called with mu held.
func (c *Cache) finishLocked(o *object, ci int64, f *flight, buf []byte, err error) {
	select {
	case <-f.done:
	default:
		f.buf, f.err = buf, err
		if err == nil {
			c.rememberLocked(o, ci, buf)
		}
		close(f.done)
	}
	delete(o.flights, ci)
	o.active--
	if o.idle() {
		c.retireLocked(o)
	}
}

// dropCorruptLocked forgets chunk ch, which failed its checks on disk, and clears
// it there: it is never served, and the read that found it fetches it
// again. Called with mu held.
func (c *Cache) dropCorruptLocked(o *object, ch *chunk, err error) {
	c.stats.corrupt.Add(1)
	delete(o.chunks, ch.ci)
	c.bytes -= ch.alloc
	if !c.closed {
		c.log.Warn("diskcache: cached chunk is corrupt; fetching it again",
			"key", o.key, "offset", ch.ci*c.chunkSize, "file", o.dataPath, "err", err)
		c.dropOnDisk(o, ch.ci, "drop corrupt")
	}
}

// scattered says whether a read of n bytes at off of o is a small one away
// from the last read of o: a fault with no neighbour read just before it.
// Such a read of a chunk on disk reads only the blocks it needs (readPart);
// the others load whole chunks, which the memory tier keeps for the reads
// that follow.
func (c *Cache) scattered(o *object, off, n int64) bool {
	return o.lastEnd.Swap(off+n) != off && n <= partMax
}

// readPart reads the blocks of chunk ci that [lo, lo+len(p)) (offsets in
// the chunk) covers from disk into p, and checks them, when the chunk is
// on disk and neither in memory nor being loaded; it reports whether it
// did. Otherwise the read loads the chunk (load): from memory, from disk
// whole, or, for a chunk whose blocks failed their checks here and which
// was dropped, from the store.
func (c *Cache) readPart(o *object, ci, lo int64, p []byte) bool {
	c.mu.Lock()
	ch := o.chunks[ci]
	if c.closed || o.gone || ch == nil || ch.list == nil || o.flights[ci] != nil ||
		c.mem.has(o, ci) || o.openFiles(true) != nil {
		c.mu.Unlock()
		return false
	}
	f := &flight{done: make(chan struct{}), part: true}
	o.flights[ci] = f
	o.active++
	ch.list.remove(ch) // in use: not to be evicted while we read it
	c.io.Add(1)
	c.mu.Unlock()

	first := lo / blockSize
	start := first * blockSize
	buf := alignedBuf(min(roundUp64(lo+int64(len(p)), blockSize), o.chunkLen(ci)) - start)
	err := c.readBlocks(o, ch, start, buf)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.io.Done()
	if err != nil {
		c.dropCorruptLocked(o, ch, err)
	} else {
		copy(p, buf[lo-start:])
		c.listFor(o).pushFront(ch)
	}
	c.finishLocked(o, ci, f, nil, nil)
	return err == nil
}

// rememberLocked keeps a chunk in memory. Called with mu held.
func (c *Cache) rememberLocked(o *object, ci int64, buf []byte) {
	if buf != nil && !c.closed && !o.gone {
		c.mem.put(o, ci, buf)
	}
}

// readBlocks reads len(buf) bytes of chunk ch from start, a block boundary,
// into buf (aligned, see alignedBuf; the whole chunk from 0 for a load),
// and checks them block by block against the table its record vouches for.
func (c *Cache) readBlocks(o *object, ch *chunk, start int64, buf []byte) error {
	off := ch.ci*c.chunkSize + start
	var n int
	var err error
	if o.direct != nil {
		// The buffer is page aligned with a page-multiple capacity, so
		// the whole pages of the chunk can be read past a short last chunk.
		n, err = o.direct.ReadAt(buf[:cap(buf)], off)
		if errors.Is(err, syscall.EINVAL) {
			n, err = o.data.ReadAt(buf, off)
		}
	} else {
		n, err = o.data.ReadAt(buf, off)
	}
	if n < len(buf) {
		if err == nil || err == io.EOF {
			return fmt.Errorf("short read: %d of %d bytes at %d", n, len(buf), off)
		}
		return err
	}
	sums, err := c.readSums(o, ch)
	if err != nil {
		return err
	}
	if err := checkBlocks(buf, start/blockSize, sums); err != nil {
		return err
	}
	c.readDone(o, ch, len(buf))
	return nil
}

// readSums reads chunk ch's block checksum table and checks it against its
// record.
func (c *Cache) readSums(o *object, ch *chunk) ([]byte, error) {
	sums := make([]byte, 4*blocksIn(o.chunkLen(ch.ci)))
	if n, err := o.idx.ReadAt(sums, o.sumsAt(ch.ci)); n < len(sums) {
		return nil, fmt.Errorf("block checksums: %d of %d bytes: %w", n, len(sums), err)
	}
	if got := checksum(sums); got != ch.crc {
		return nil, fmt.Errorf("block checksums' checksum %08x, want %08x", got, ch.crc)
	}
	return sums, nil
}

// readDone counts a read of n bytes of ch from disk and rewrites its record
// with a new sequence number, so that a restarted daemon knows the chunk
// was used.
func (c *Cache) readDone(o *object, ch *chunk, n int) {
	c.stats.hits.Add(1)
	c.stats.bytesRead.Add(uint64(n))
	ch.seq = c.seq.Add(1)
	r := record{crc: ch.crc, length: uint32(o.chunkLen(ch.ci)), seq: ch.seq}.encode(ch.ci)
	o.idx.WriteAt(r[:], o.recOff+ch.ci*recordSize) // a lost update only ages the chunk
}

// store writes a fetched chunk to disk: data, block checksums, record (see
// "Crash safety"), after making room for it. A failure is counted and
// logged, and the chunk is not cached; the read that fetched it is served
// all the same.
func (c *Cache) store(o *object, ci int64, buf []byte) {
	sums := blockSums(buf) // outside mu: 2 MiB take tens of microseconds
	crc := checksum(sums)
	alloc := roundUp64(int64(len(buf)), pageSize)
	c.mu.Lock()
	if c.closed || o.gone {
		c.mu.Unlock()
		return
	}
	if !c.reserveLocked(alloc) {
		c.mu.Unlock()
		c.stats.uncached.Add(1)
		return
	}
	ch := &chunk{obj: o, ci: ci, crc: crc, alloc: alloc, seq: c.seq.Add(1)}
	o.chunks[ci] = ch
	c.bytes += alloc
	c.io.Add(1)
	c.mu.Unlock()

	off := ci * c.chunkSize
	op := "write data"
	_, err := o.data.WriteAt(buf, off)
	if err == nil {
		op = "write checksums"
		_, err = o.idx.WriteAt(sums, o.sumsAt(ci))
	}
	if err == nil {
		op = "write record"
		r := record{crc: crc, length: uint32(len(buf)), seq: ch.seq}.encode(ci)
		_, err = o.idx.WriteAt(r[:], o.recOff+ci*recordSize)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.io.Done() // after the cleanup below, which Close must not race
	if err != nil {
		c.stats.writeErrors.Add(1)
		delete(o.chunks, ci)
		c.bytes -= alloc
		c.logDiskError(op, o, ci, err)
		if !c.closed {
			c.dropOnDisk(o, ci, "undo failed write")
		}
		return
	}
	c.stats.bytesWritten.Add(uint64(len(buf)))
	c.listFor(o).pushFront(ch)
}

// alignedBuf returns an n-byte buffer that starts on a page and has a
// page-multiple capacity, as O_DIRECT reads need.
func alignedBuf(n int64) []byte {
	size := roundUp64(n, pageSize)
	b := make([]byte, size+pageSize)
	skip := (pageSize - int64(uintptr(unsafe.Pointer(&b[0]))%pageSize)) % pageSize
	return b[skip : skip+n : skip+size]
}
