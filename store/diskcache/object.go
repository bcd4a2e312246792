package diskcache

import (
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// object is one object version with files in the directory. Its fields
// after the first group are guarded by Cache.mu.
type object struct {
	stem, key, version string
	size               int64
	chunkSize          int64
	nchunks            int64
	recOff             int64 // where the index records start
	sumOff             int64 // where the block checksum tables start
	idxPath, dataPath  string

	users  int  // open stores wrapping it
	active int  // chunk loads in progress: they keep the files open
	stale  bool // a newer version of the key has been wrapped since
	gone   bool // files deleted, object forgotten

	chunks  map[int64]*chunk  // on disk, being read from disk, or being written
	flights map[int64]*flight // chunk loads in progress, by chunk index
	lastEnd atomic.Int64      // where the last read ended, without mu: a read from here is sequential

	// idx and data are open while the object is in use or being evicted
	// from; direct, the data file opened with O_DIRECT for reads, is nil
	// where the file system refuses it.
	idx, data, direct *os.File
	noDirect          bool // O_DIRECT was refused once: do not ask on every read
}

func (c *Cache) newObject(stem string, h header) *object {
	return &object{
		stem:      stem,
		key:       h.key,
		version:   h.version,
		size:      h.size,
		chunkSize: h.chunkSize,
		nchunks:   (h.size + h.chunkSize - 1) / h.chunkSize,
		recOff:    recordsStart(h.key, h.version),
		sumOff:    sumsStart(h.key, h.version, (h.size+h.chunkSize-1)/h.chunkSize),
		idxPath:   filepath.Join(c.dir, stem+idxSuffix),
		dataPath:  filepath.Join(c.dir, stem+dataSuffix),
		chunks:    make(map[int64]*chunk),
		flights:   make(map[int64]*flight),
	}
}

// createLocked starts the files of a new object, replacing any left over. The
// index is truncated first, so that no record outlives the data it vouched
// for, and its header is written last. Called with mu held.
func (c *Cache) createLocked(stem string, h header) (*object, error) {
	o := c.newObject(stem, h)
	idx, err := os.OpenFile(o.idxPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	data, err := os.OpenFile(o.dataPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		idx.Close()
		os.Remove(o.idxPath)
		return nil, err
	}
	if _, err := idx.WriteAt(h.encode(), 0); err != nil {
		idx.Close()
		data.Close()
		os.Remove(o.idxPath)
		os.Remove(o.dataPath)
		return nil, err
	}
	o.idx, o.data = idx, data
	o.openDirect()
	return o, nil
}

// openFiles opens the files of an object found on disk, with the direct
// reader too if reads will follow.
func (o *object) openFiles(reads bool) error {
	if o.idx == nil {
		f, err := os.OpenFile(o.idxPath, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		o.idx = f
	}
	if o.data == nil {
		f, err := os.OpenFile(o.dataPath, os.O_RDWR, 0)
		if err != nil {
			o.closeFiles()
			return err
		}
		o.data = f
	}
	if reads {
		o.openDirect()
	}
	return nil
}

// openDirect opens the data file for O_DIRECT reads. Why: a chunk read from
// disk is about to be copied into filemap's page cache, the memfd; through
// the kernel's page cache it would sit in memory twice.
func (o *object) openDirect() {
	if o.direct != nil || o.noDirect {
		return
	}
	f, err := os.OpenFile(o.dataPath, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		o.noDirect = true
		return
	}
	o.direct = f
}

func (o *object) closeFiles() {
	for _, f := range []**os.File{&o.idx, &o.data, &o.direct} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
}

func (o *object) idle() bool { return o.users == 0 && o.active == 0 }

// sumsAt is where chunk ci's block checksum table lies in the index.
func (o *object) sumsAt(ci int64) int64 { return o.sumOff + ci*4*blocksIn(o.chunkSize) }

// chunkLen is the length of chunk ci: ChunkSize, or less for the last.
func (o *object) chunkLen(ci int64) int64 {
	return min(o.chunkSize, o.size-ci*o.chunkSize)
}

// chunk is a chunk of an object on disk. Its fields are guarded by
// Cache.mu.
type chunk struct {
	obj   *object
	ci    int64
	crc   uint32 // of its bytes
	alloc int64  // its length rounded up to pages: what it costs on disk
	seq   uint64

	// list is the list it is on, nil while it is being read or written:
	// eviction only takes chunks from lists, so it never pulls a chunk from
	// under a read.
	list       *chunkList
	prev, next *chunk
}

// chunkList is a doubly linked list of chunks, most recently used first.
type chunkList struct{ head, tail *chunk }

func (l *chunkList) pushFront(ch *chunk) {
	ch.list, ch.prev, ch.next = l, nil, l.head
	if l.head != nil {
		l.head.prev = ch
	} else {
		l.tail = ch
	}
	l.head = ch
}

// remove takes ch off l; l may be nil, for a chunk on no list.
func (l *chunkList) remove(ch *chunk) {
	if l == nil {
		return
	}
	if ch.prev != nil {
		ch.prev.next = ch.next
	} else {
		l.head = ch.next
	}
	if ch.next != nil {
		ch.next.prev = ch.prev
	} else {
		l.tail = ch.prev
	}
	ch.list, ch.prev, ch.next = nil, nil, nil
}

func (l *chunkList) back() *chunk { return l.tail }

// listFor is the list an object's chunks belong on.
func (c *Cache) listFor(o *object) *chunkList {
	if o.stale {
		return &c.stale
	}
	return &c.lru
}

// touch makes ch the most recently used chunk, if it is on a list.
func (c *Cache) touch(ch *chunk) {
	if ch.list != nil {
		l := ch.list
		l.remove(ch)
		l.pushFront(ch)
	}
}

// flight is a chunk load in progress: concurrent reads of the chunk wait for
// it instead of loading the chunk again. A finished flight stays listed
// while its chunk is being written to disk, so that reads arriving then take
// its bytes rather than fetch them again.
type flight struct {
	done    chan struct{}
	buf     []byte // the chunk, set before done is closed; never written after
	err     error
	waiters int  // reads waiting for it, for tests
	part    bool // a read of a few blocks (readPart): no chunk for others
}

// memCache keeps the last few verified or fetched chunks in memory. Their
// buffers are never written once published, so readers copy from them
// without a lock; a buffer dropped from here is freed by the garbage
// collector once its last reader is done with it.
type memCache struct {
	slots []memChunk
	tick  uint64
}

type memChunk struct {
	obj  *object
	ci   int64
	buf  []byte
	used uint64
}

func (m *memCache) get(o *object, ci int64) []byte {
	for i := range m.slots {
		if s := &m.slots[i]; s.obj == o && s.ci == ci {
			m.tick++
			s.used = m.tick
			return s.buf
		}
	}
	return nil
}

// has says whether chunk ci of o is in memory, without counting a use.
func (m *memCache) has(o *object, ci int64) bool {
	for i := range m.slots {
		if s := &m.slots[i]; s.obj == o && s.ci == ci {
			return true
		}
	}
	return false
}

func (m *memCache) put(o *object, ci int64, buf []byte) {
	if len(m.slots) == 0 {
		return
	}
	victim := &m.slots[0]
	for i := range m.slots {
		s := &m.slots[i]
		if s.obj == o && s.ci == ci {
			victim = s
			break
		}
		if s.used < victim.used {
			victim = s
		}
	}
	m.tick++
	*victim = memChunk{obj: o, ci: ci, buf: buf, used: m.tick}
}

func (m *memCache) drop(o *object) {
	for i := range m.slots {
		if m.slots[i].obj == o {
			m.slots[i] = memChunk{}
		}
	}
}

func (m *memCache) clear() {
	for i := range m.slots {
		m.slots[i] = memChunk{}
	}
}
