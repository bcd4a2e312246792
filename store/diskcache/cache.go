package diskcache

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Defaults of the options.
const (
	// DefaultChunkSize equals remote.DefaultChunkSize, so that with default
	// settings one disk chunk is one remote request.
	DefaultChunkSize = 2 << 20
	// DefaultMemChunks is how many verified chunks are kept in memory: enough
	// for a few readers walking through different chunks, small next to the
	// page cache, which is where bytes are meant to be cached in memory.
	DefaultMemChunks = 4

	// maxChunkSize keeps a chunk's length within the record's 32 bits.
	maxChunkSize = 1 << 30
	// readParallel bounds the chunks one ReadAt loads at once: a
	// readahead window of several chunks that all miss should wait for
	// one round trip, not one per chunk.
	readParallel = 8

	// partMax is the largest read that reads only the blocks it needs of
	// a chunk on disk, when it has no neighbour read just before it: a
	// fault's read-around (128 KiB) and a little more.
	partMax = 256 << 10
)

// Option tunes a Cache.
type Option func(*config)

type config struct {
	chunkSize int64
	memChunks int
	log       *slog.Logger
}

// WithChunkSize sets the chunk size, rounded up to a multiple of 4096 as
// remote.Config.ChunkSize is: give both the same value. The chunk size of a
// directory's files is recorded in them; files of another chunk size are
// discarded at Open.
func WithChunkSize(n int) Option { return func(c *config) { c.chunkSize = int64(n) } }

// WithMemChunks sets how many verified chunks are kept in memory (default 4).
// 0 keeps none: every read of a cached chunk reads and verifies it on disk.
func WithMemChunks(n int) Option { return func(c *config) { c.memChunks = n } }

// WithLogger sets where corrupt chunks and disk errors are reported
// (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// Stats are a Cache's counters since Open.
type Stats struct {
	Hits    uint64 // chunk loads, and scattered reads of a chunk's blocks, served from disk, checksums verified
	MemHits uint64 // chunk loads served from the verified chunks kept in memory
	Misses  uint64 // chunk loads read from the wrapped store

	BytesRead    uint64 // bytes read from disk by hits
	BytesWritten uint64 // chunk bytes written to disk

	// Corrupt counts chunks that were not served from disk although their
	// record was present: a checksum mismatch, a short or failed read, or a
	// damaged record found at Open. Each was dropped and fetched again.
	Corrupt uint64
	// CorruptIndexes counts index files found damaged at Open: their
	// objects were treated as empty and their files deleted.
	CorruptIndexes uint64
	// WriteErrors counts chunks that could not be written to disk, and
	// objects whose files could not be made or opened, whose chunks are
	// then not cached (on a full disk, say). Their reads are served
	// anyway.
	WriteErrors uint64
	// Uncached counts fetched chunks not written because the budget was
	// taken entirely by chunks being read or written at that moment.
	Uncached uint64
	// Evictions counts chunks dropped from disk to stay within the budget
	// or because a newer version of their object was wrapped.
	Evictions uint64

	BytesOnDisk int64 // chunk bytes on disk now, each rounded up to 4 KiB
	MaxBytes    int64 // the budget
	Objects     int   // object versions with files in the directory
}

type counters struct {
	hits, memHits, misses                atomic.Uint64
	bytesRead, bytesWritten              atomic.Uint64
	corrupt, corruptIndexes, writeErrors atomic.Uint64
	uncached, evictions                  atomic.Uint64
}

// Cache is one daemon's disk cache directory. Its methods may be called from
// many goroutines.
type Cache struct {
	dir       string
	max       int64
	chunkSize int64
	log       *slog.Logger
	lock      *os.File // flocked for the Cache's lifetime

	stats counters
	seq   atomic.Uint64 // for records: larger is more recently used

	// io counts the disk I/O done outside mu, which Close waits for before
	// it closes the files. Fetches from stores are not counted: Close must
	// not wait for the network.
	io sync.WaitGroup

	mu      sync.Mutex // protects the fields below, and every object's
	closed  bool
	objects map[string]*object // by file stem
	lru     chunkList          // chunks on disk and not in use, most recent first
	stale   chunkList          // the same, of superseded versions: evicted first
	bytes   int64              // chunk bytes on disk or being written, rounded up to pages
	mem     memCache
	logged  map[string]uint64 // rate limiting of repeated disk error logs
}

// Open opens the cache directory dir, creating it (0700) if needed, and
// scans the indexes of the chunks earlier daemons left there. maxBytes bounds
// the chunk bytes on disk; it must be at least one chunk.
//
// Open fails if another daemon (or another Cache in this process) holds dir,
// or if dir is not writable or its file system cannot punch holes: a daemon
// asked for a disk cache should say so at start rather than run without one.
// A caller that prefers to run without the cache can ignore the error and not
// wrap its stores.
//
// A full file system (ENOSPC, EDQUOT) is not an error once the directory is
// locked: the Cache serves the chunks on disk, and a chunk that cannot be
// written is counted (Stats.WriteErrors) and served all the same, as at
// any other time the disk fills, until there is room again. Full(err) tells
// an error of a full file system, which Open returns only when it could not
// even make the directory or its lock file.
func Open(dir string, maxBytes int64, opts ...Option) (*Cache, error) {
	cfg := config{chunkSize: DefaultChunkSize, memChunks: DefaultMemChunks, log: slog.Default()}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.chunkSize <= 0 {
		cfg.chunkSize = DefaultChunkSize
	}
	cfg.chunkSize = roundUp64(cfg.chunkSize, pageSize)
	if cfg.chunkSize > maxChunkSize {
		return nil, fmt.Errorf("diskcache: %s: chunk size %d is larger than %d", dir, cfg.chunkSize, maxChunkSize)
	}
	if maxBytes <= 0 {
		return nil, fmt.Errorf("diskcache: %s: the size limit must be positive, got %d", dir, maxBytes)
	}
	if maxBytes < cfg.chunkSize {
		return nil, fmt.Errorf("diskcache: %s: the size limit %d is less than one chunk (%d bytes): nothing could be cached",
			dir, maxBytes, cfg.chunkSize)
	}
	if cfg.log == nil {
		cfg.log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("diskcache: create cache directory: %w", err)
	}
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("diskcache: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("diskcache: %s is not a directory", dir)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	var full error // the file system is full: noted, and the cache used
	if err := writeHolder(dir, lock); Full(err) {
		full = err
	} else if err != nil {
		lock.Close()
		return nil, err
	}
	if err := probe(dir, lock); Full(err) {
		full = err
	} else if err != nil {
		lock.Close()
		return nil, err
	}
	c := &Cache{
		dir:       dir,
		max:       maxBytes,
		chunkSize: cfg.chunkSize,
		log:       cfg.log.With("dir", dir),
		lock:      lock,
		objects:   make(map[string]*object),
		mem:       memCache{slots: make([]memChunk, max(cfg.memChunks, 0))},
		logged:    make(map[string]uint64),
	}
	if full != nil {
		c.log.Warn("diskcache: the cache directory's file system is full: serving the chunks on disk; "+
			"new chunks are cached once it has room", "err", full)
	}
	c.scan()
	return c, nil
}

// Full reports whether err is that of a full file system, or of a quota
// used up: a condition of the disk that passes, not of the configuration.
func Full(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}

// lockDir takes the directory's lock file, which names the holder's pid.
// flock, not a pid file alone: the kernel drops it when its holder dies,
// however it dies, so a killed daemon never leaves its directory locked.
func lockDir(dir string) (*os.File, error) {
	name := filepath.Join(dir, lockName)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("diskcache: cache directory %s is not usable (it must be writable): %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := "another process"
			var b [32]byte
			n, _ := f.ReadAt(b[:], 0)
			if pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:n]))); err == nil && pid > 0 {
				holder = "process " + strconv.Itoa(pid)
				if pid == os.Getpid() {
					holder += " (this process: another Cache)"
				}
			}
			return nil, fmt.Errorf("diskcache: cache directory %s is in use by %s (lock file %s); give each daemon its own directory",
				dir, holder, name)
		}
		return nil, fmt.Errorf("diskcache: lock %s: %w", name, err)
	}
	return f, nil
}

// writeHolder writes this process's pid into the lock file, for the error
// of a daemon that finds the directory in use. The pid is written over the
// old one before the file is cut to its length, so that on a full file
// system the block the old pid held is reused; where there is none, the
// lock holds without the pid, and the error says the file system is full.
func writeHolder(dir string, lock *os.File) error {
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	_, err := lock.WriteAt(pid, 0)
	if err == nil {
		err = lock.Truncate(int64(len(pid)))
	}
	if err != nil {
		return fmt.Errorf("diskcache: cache directory %s is not usable (it must be writable): write %s: %w", dir, lock.Name(), err)
	}
	return nil
}

// probe checks that files can be created in dir and holes punched in them,
// which eviction needs: without hole punching the cache could not stay
// within its budget. On a full file system, where nothing can be written,
// it punches a hole where lock has none, which tells as well whether the
// file system can, and returns the error of the full file system.
func probe(dir string, lock *os.File) error {
	f, err := os.CreateTemp(dir, ".probe-*")
	if Full(err) {
		return probeFull(dir, lock, err)
	}
	if err != nil {
		return fmt.Errorf("diskcache: cache directory %s is not usable (it must be writable): %w", dir, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, 2*pageSize), 0); Full(err) {
		return probeFull(dir, lock, err)
	} else if err != nil {
		return fmt.Errorf("diskcache: cache directory %s is not usable: write %s: %w", dir, f.Name(), err)
	}
	return probePunch(dir, f, 0)
}

// probeFull is probe on a full file system: full is its error.
func probeFull(dir string, lock *os.File, full error) error {
	if err := probePunch(dir, lock, pageSize); err != nil {
		return err
	}
	return fmt.Errorf("diskcache: cache directory %s: %w", dir, full)
}

func probePunch(dir string, f *os.File, off int64) error {
	if err := punch(f, off, pageSize); err != nil {
		return fmt.Errorf("diskcache: cache directory %s is not usable: its file system cannot punch holes (fallocate FALLOC_FL_PUNCH_HOLE), which eviction needs: %w",
			dir, err)
	}
	return nil
}

func punch(f *os.File, off, n int64) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err != nil {
		return &os.PathError{Op: "punch hole", Path: f.Name(), Err: err}
	}
	return nil
}

// scan finds the objects an earlier daemon left, reading only their
// indexes, and orders their chunks by the sequence numbers of the records.
func (c *Cache) scan() {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		c.log.Warn("diskcache: cannot list the cache directory; starting empty", "err", err)
		return
	}
	idx := make(map[string]bool)
	for _, e := range ents {
		if stem, ok := cutSuffix(e.Name(), idxSuffix); ok && e.Type().IsRegular() {
			idx[stem] = true
		}
	}
	c.mu.Lock() // nobody else can see c yet; evict and reserve expect it held
	defer c.mu.Unlock()
	var all []*chunk
	for _, e := range ents {
		name := e.Name()
		if stem, ok := cutSuffix(name, dataSuffix); ok && !idx[stem] {
			os.Remove(filepath.Join(c.dir, name)) // data without an index: nothing vouches for it
		}
	}
	for stem := range idx {
		if o := c.loadIndex(stem); o != nil {
			c.objects[stem] = o
			for _, ch := range o.chunks {
				all = append(all, ch)
			}
		}
	}
	slices.SortFunc(all, func(a, b *chunk) int { return cmp.Compare(a.seq, b.seq) })
	var top uint64
	for _, ch := range all {
		c.lru.pushFront(ch) // ascending: the most recent ends at the front
		c.bytes += ch.alloc
		top = max(top, ch.seq)
	}
	c.seq.Store(top)
	c.reserveLocked(0) // a smaller budget than last time: evict down to it now
}

// cutSuffix returns the stem of a file name of ours.
func cutSuffix(name, suffix string) (string, bool) {
	stem, ok := strings.CutSuffix(name, suffix)
	return stem, ok && isStem(stem)
}

// loadIndex reads one object's index. It returns nil, having deleted the
// object's files, if the index is damaged, of another chunk size, or lists
// no chunk.
func (c *Cache) loadIndex(stem string) *object {
	idxPath := filepath.Join(c.dir, stem+idxSuffix)
	dataPath := filepath.Join(c.dir, stem+dataSuffix)
	discard := func() {
		os.Remove(idxPath)
		os.Remove(dataPath)
	}
	b, err := os.ReadFile(idxPath)
	if err != nil {
		c.log.Warn("diskcache: cannot read index; its chunks are ignored", "file", idxPath, "err", err)
		return nil
	}
	h, err := decodeHeader(b)
	if errors.Is(err, errOldFormat) {
		c.log.Info("diskcache: index of an older format: deleting its files", "file", idxPath, "err", err)
		discard()
		return nil
	}
	if err == nil && stemOf(h.key, h.version) != stem {
		err = fmt.Errorf("the key and version it names (%q, %q) do not match its file name", h.key, h.version)
	}
	if err != nil {
		c.stats.corruptIndexes.Add(1)
		c.log.Warn("diskcache: corrupt index file: treating its object as empty and deleting its files",
			"file", idxPath, "err", err)
		discard()
		return nil
	}
	if h.chunkSize != c.chunkSize {
		c.log.Info("diskcache: index written with another chunk size: deleting its files",
			"file", idxPath, "key", h.key, "chunk_size", h.chunkSize, "want", c.chunkSize)
		discard()
		return nil
	}
	if _, err := os.Stat(dataPath); err != nil {
		discard()
		return nil
	}
	o := c.newObject(stem, h)
	bad := 0
	for ci := int64(0); ci < o.nchunks; ci++ {
		off := o.recOff + ci*recordSize
		if off+recordSize > int64(len(b)) {
			break
		}
		rb := b[off : off+recordSize]
		r, ok := decodeRecord(rb, ci)
		if !ok || int64(r.length) != o.chunkLen(ci) {
			if !isZero(rb) {
				bad++
			}
			continue
		}
		o.chunks[ci] = &chunk{obj: o, ci: ci, crc: r.crc, alloc: roundUp64(int64(r.length), pageSize), seq: r.seq}
	}
	if bad > 0 {
		c.stats.corrupt.Add(uint64(bad))
		c.log.Warn("diskcache: index records failed their checksum: those chunks will be fetched again",
			"file", idxPath, "key", h.key, "records", bad)
	}
	if len(o.chunks) == 0 {
		discard()
		return nil
	}
	c.reclaim(o)
	return o
}

// reclaim punches holes over the chunks of o without a record: bytes a
// daemon wrote, or meant to drop, when it died, which the budget does not
// count. It walks the file's allocated extents (SEEK_DATA, SEEK_HOLE), so a
// file without leftovers costs a few lseeks and no data is read. Only at
// Open, before anyone uses o.
func (c *Cache) reclaim(o *object) {
	f, err := os.OpenFile(o.dataPath, os.O_RDWR, 0)
	if err != nil {
		c.log.Warn("diskcache: cannot open data file to free unaccounted space", "file", o.dataPath, "err", err)
		return
	}
	defer f.Close()
	fd := int(f.Fd())
	for off := int64(0); ; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			return // ENXIO: no data past off
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil || end <= start {
			return
		}
		// Punch each run of recordless chunks that meets [start, end).
		for ci := start / c.chunkSize; ci*c.chunkSize < end; {
			if o.chunks[ci] != nil {
				ci++
				continue
			}
			run := ci
			for ci*c.chunkSize < end && o.chunks[ci] == nil {
				ci++
			}
			if err := punch(f, run*c.chunkSize, (ci-run)*c.chunkSize); err != nil {
				c.log.Warn("diskcache: cannot free unaccounted space", "file", o.dataPath, "err", err)
				return
			}
		}
		off = end
	}
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	onDisk, objects := c.bytes, len(c.objects)
	c.mu.Unlock()
	return Stats{
		Hits:           c.stats.hits.Load(),
		MemHits:        c.stats.memHits.Load(),
		Misses:         c.stats.misses.Load(),
		BytesRead:      c.stats.bytesRead.Load(),
		BytesWritten:   c.stats.bytesWritten.Load(),
		Corrupt:        c.stats.corrupt.Load(),
		CorruptIndexes: c.stats.corruptIndexes.Load(),
		WriteErrors:    c.stats.writeErrors.Load(),
		Uncached:       c.stats.uncached.Load(),
		Evictions:      c.stats.evictions.Load(),
		BytesOnDisk:    onDisk,
		MaxBytes:       c.max,
		Objects:        objects,
	}
}

// Dir is the cache directory.
func (c *Cache) Dir() string { return c.dir }

// ChunkSize is the chunk size in bytes.
func (c *Cache) ChunkSize() int { return int(c.chunkSize) }

// Close waits for the disk I/O in progress, closes the files and releases
// the directory. Stores wrapped earlier keep working after Close, reading
// their wrapped stores directly; Close them too. Close does not flush
// anything to stable storage: see the package comment.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.io.Wait()
	c.mu.Lock()
	for _, o := range c.objects {
		o.closeFiles()
	}
	c.mem.clear()
	c.mu.Unlock()
	return c.lock.Close() // and with it the flock
}

// reserveLocked makes room for n more bytes by evicting chunks, superseded
// versions first, least recently used first. It reports false if the
// chunks that could be evicted do not make enough room. Called with mu held.
func (c *Cache) reserveLocked(n int64) bool {
	for c.bytes+n > c.max {
		ch := c.stale.back()
		if ch == nil {
			ch = c.lru.back()
		}
		if ch == nil {
			return false
		}
		c.evictLocked(ch, "evict")
	}
	return true
}

// evictLocked drops a chunk that is on disk and not in use: its record first, then
// its bytes (see "Crash safety"). Called with mu held: a hole punch and a
// 32-byte write cost microseconds, and holding mu means no read of the chunk
// can start meanwhile.
func (c *Cache) evictLocked(ch *chunk, why string) {
	o := ch.obj
	ch.list.remove(ch)
	delete(o.chunks, ch.ci)
	c.bytes -= ch.alloc
	c.stats.evictions.Add(1)
	if c.closed {
		return
	}
	idle := o.idle()
	if idle {
		if err := o.openFiles(false); err != nil {
			c.logDiskError("open", o, ch.ci, err)
			return
		}
	}
	c.dropOnDisk(o, ch.ci, why)
	if idle {
		c.retireLocked(o)
	}
}

// dropOnDisk clears chunk ci's record and punches its hole. The record is
// cleared by a punch too, which zeroes it and never needs room, where a
// write of zeros into a page of the index never written would: on a full
// disk a chunk is still dropped, and a chunk that filled it midway undone.
// Errors are logged: a record that could not be cleared still guards its
// chunk, whose bytes are checked on every read.
func (c *Cache) dropOnDisk(o *object, ci int64, why string) {
	if err := punch(o.idx, o.recOff+ci*recordSize, recordSize); err != nil {
		c.logDiskError(why+": clear record", o, ci, err)
		return
	}
	if err := punch(o.data, ci*c.chunkSize, c.chunkSize); err != nil {
		c.logDiskError(why, o, ci, err)
	}
}

// logDiskError logs a disk error, but only the 1st, 2nd, 4th, 8th... of each
// kind: a full or failing disk would otherwise log every fetch.
func (c *Cache) logDiskError(op string, o *object, ci int64, err error) {
	c.logged[op]++
	if n := c.logged[op]; n&(n-1) == 0 {
		c.log.Warn("diskcache: disk error; the cache goes on without this chunk",
			"op", op, "key", o.key, "offset", ci*c.chunkSize, "file", o.dataPath, "err", err, "count", n)
	}
}

// retireLocked closes the files of an object nobody uses, or deletes them if the
// object holds no chunk or has been superseded. Called with mu held.
func (c *Cache) retireLocked(o *object) {
	if !o.idle() || o.gone {
		return
	}
	if o.stale || len(o.chunks) == 0 {
		c.forgetLocked(o)
		return
	}
	o.closeFiles()
}

// forgetLocked deletes an idle object's files and chunks. Called with mu held.
func (c *Cache) forgetLocked(o *object) {
	for _, ch := range o.chunks {
		ch.list.remove(ch)
		c.bytes -= ch.alloc
		c.stats.evictions.Add(1)
	}
	o.chunks = nil
	c.mem.drop(o)
	o.closeFiles()
	o.gone = true
	delete(c.objects, o.stem)
	if !c.closed {
		os.Remove(o.idxPath) // the index first: data without one is never trusted
		os.Remove(o.dataPath)
	}
}
