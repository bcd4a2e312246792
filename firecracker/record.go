package firecracker

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A working-set record is the order in which a restored guest first touched
// the pages of its memory file. Version 1 is, all integers little-endian:
//
//	header
//	  8 bytes  magic "FMWSET\r\n" (the CR LF catches text-mode mangling)
//	  u16      version, 1
//	  u16      flags, 0 (a decoder of version 1 refuses others)
//	  u32      page size in bytes: the unit of the page numbers, a power of
//	           two from 4096 to 1 GiB (4096, or 2 MiB for hugetlbfs guests)
//	  u64      size of the memory file in bytes
//	  i64      start of the restore, Unix nanoseconds (for people)
//	  u16      length n of the memory file's version, then n bytes of it
//	           (a local file's size@mtime, an HTTP ETag, an S3 VersionId)
//	entries, one per page, in first-touch order
//	  uvarint  zigzag(page − previous page), the previous page starting at
//	           −1; a page appears once, so this is never 0
//	  uvarint  milliseconds since the previous entry (the first: since start)
//	trailer, written when the restore ends (disconnect, SIGTERM)
//	  uvarint  0, the end marker
//	  u64      number of entries
//	  u32      CRC-32C (Castagnoli) of every byte before it, header included
//
// Pages are numbered in page-size units from the start of the memory file:
// page p is bytes [p·size, (p+1)·size). A guest touches memory in runs and
// neighbourhoods, so most deltas are small: about 2–3 bytes an entry.
//
// The writer appends entries as the guest faults and flushes them often, so
// a crash leaves a prefix that decodes: a record without its trailer is
// incomplete, not corrupt (Record.Complete is false), and a partial last
// entry is dropped. The CRC is only over a finished record; a prefix is
// checked by its page numbers, each of which must be inside the file and
// new.
const recordMagic = "FMWSET\r\n"

const (
	recordVersion = 1
	recordHeader  = 8 + 2 + 2 + 4 + 8 + 8 + 2 // bytes before the version string
	maxVersionLen = 4096
	maxObjectSize = 1 << 50 // 1 PiB; keeps page arithmetic far from overflow
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record is a decoded working-set record.
type Record struct {
	PageSize      int64     // the unit of Pages, in bytes
	ObjectSize    int64     // the memory file's size
	ObjectVersion string    // the memory file's version when it was recorded
	Start         time.Time // when the recorded restore began
	Pages         []int64   // page numbers, in first-touch order, each once
	// At is, for each page, how long after Start it was first touched,
	// with millisecond resolution.
	At []time.Duration
	// Complete says the record ends with its trailer, checked: the writer
	// finished. Otherwise it is the prefix a crash left.
	Complete bool
}

// ErrRecord is wrapped by every error DecodeRecord returns.
var ErrRecord = errors.New("bad working-set record")

// DecodeRecord decodes a record. A record cut short — by a crash of the
// handler that wrote it — decodes to the pages before the cut, with
// Complete false. Its memory use is bounded by len(b).
func DecodeRecord(b []byte) (*Record, error) {
	bad := func(format string, args ...any) (*Record, error) {
		return nil, fmt.Errorf("%w: %s", ErrRecord, fmt.Sprintf(format, args...))
	}
	if len(b) < recordHeader {
		if len(b) >= len(recordMagic) && string(b[:len(recordMagic)]) != recordMagic {
			return bad("magic %q, want %q", b[:len(recordMagic)], recordMagic)
		}
		return bad("%d bytes, shorter than the %d-byte header", len(b), recordHeader)
	}
	le := binary.LittleEndian
	if string(b[:8]) != recordMagic {
		return bad("magic %q, want %q", b[:8], recordMagic)
	}
	if v := le.Uint16(b[8:]); v != recordVersion {
		return bad("version %d; this filemap reads version %d", v, recordVersion)
	}
	if f := le.Uint16(b[10:]); f != 0 {
		return bad("unknown flags %#x", f)
	}
	r := &Record{PageSize: int64(le.Uint32(b[12:]))}
	if r.PageSize < PageSize || r.PageSize > 1<<30 || r.PageSize&(r.PageSize-1) != 0 {
		return bad("page size %d: want a power of two from %d to 1 GiB", r.PageSize, PageSize)
	}
	size := le.Uint64(b[16:])
	if size > maxObjectSize {
		return bad("memory file size %d is larger than %d", size, uint64(maxObjectSize))
	}
	r.ObjectSize = int64(size)
	r.Start = time.Unix(0, int64(le.Uint64(b[24:])))
	vlen := int(le.Uint16(b[32:]))
	if vlen > maxVersionLen {
		return bad("version string of %d bytes, more than %d", vlen, maxVersionLen)
	}
	pos := recordHeader
	if len(b) < pos+vlen {
		return bad("%d bytes, shorter than the header and its %d-byte version", len(b), vlen)
	}
	r.ObjectVersion = string(b[pos : pos+vlen])
	pos += vlen
	npages := (r.ObjectSize + r.PageSize - 1) / r.PageSize
	seen := make(map[int64]struct{})
	prev := int64(-1)
	var at time.Duration
	for pos < len(b) {
		zz, n := binary.Uvarint(b[pos:])
		if n == 0 {
			return r, nil // the entry was cut short: a crash's prefix
		}
		if n < 0 {
			return bad("entry %d: page delta overflows 64 bits", len(r.Pages))
		}
		pos += n
		if zz == 0 {
			return r, decodeTrailer(r, b, pos)
		}
		delta := int64(zz>>1) ^ -int64(zz&1)
		if delta < -npages || delta > npages { // a page number would be out of range, if not overflow
			return bad("entry %d: page delta %d is larger than the memory file's %d pages", len(r.Pages), delta, npages)
		}
		page := prev + delta
		if page < 0 || page >= npages {
			return bad("entry %d: page %d (delta %d) is outside the memory file's %d pages", len(r.Pages), page, delta, npages)
		}
		if _, dup := seen[page]; dup {
			return bad("entry %d: page %d appears twice", len(r.Pages), page)
		}
		ms, m := binary.Uvarint(b[pos:])
		if m == 0 {
			return r, nil // cut short between the page and its time
		}
		if m < 0 || ms > uint64(100*365*24*time.Hour/time.Millisecond) {
			return bad("entry %d: time delta out of range", len(r.Pages))
		}
		pos += m
		at += time.Duration(ms) * time.Millisecond
		seen[page] = struct{}{}
		r.Pages = append(r.Pages, page)
		r.At = append(r.At, at)
		prev = page
	}
	return r, nil
}

// decodeTrailer checks the trailer that starts at b[pos:], after the end
// marker. A trailer cut short is a crash during the final write: the record
// is still the prefix it holds.
func decodeTrailer(r *Record, b []byte, pos int) error {
	if len(b)-pos < 12 {
		return nil
	}
	le := binary.LittleEndian
	count := le.Uint64(b[pos:])
	sum := le.Uint32(b[pos+8:])
	if got := crc32.Checksum(b[:pos+8], castagnoli); got != sum {
		return fmt.Errorf("%w: CRC-32C %#08x, the trailer says %#08x", ErrRecord, got, sum)
	}
	if count != uint64(len(r.Pages)) {
		return fmt.Errorf("%w: %d entries, the trailer says %d", ErrRecord, len(r.Pages), count)
	}
	if extra := len(b) - pos - 12; extra != 0 {
		return fmt.Errorf("%w: %d bytes after the trailer", ErrRecord, extra)
	}
	r.Complete = true
	return nil
}

// EncodeRecord is the encoding of a finished record: DecodeRecord of it
// gives r back with Complete set.
func EncodeRecord(r *Record) ([]byte, error) {
	var out sliceWriter
	w, err := newRecordWriter(&out, r.PageSize, r.ObjectSize, r.ObjectVersion, r.Start)
	if err != nil {
		return nil, err
	}
	for i, p := range r.Pages {
		var at time.Duration
		if i < len(r.At) {
			at = r.At[i]
		}
		if err := w.add(p, at); err != nil {
			return nil, err
		}
	}
	if err := w.finish(); err != nil {
		return nil, err
	}
	return out.b, nil
}

type sliceWriter struct{ b []byte }

func (s *sliceWriter) Write(p []byte) (int, error) {
	s.b = append(s.b, p...)
	return len(p), nil
}

// recordWriter writes a record to w as it goes; it checks what it writes
// as DecodeRecord would.
type recordWriter struct {
	bw     *bufio.Writer
	crc    hash.Hash32
	npages int64
	prev   int64
	last   time.Duration
	count  uint64
	seen   map[int64]struct{}
	err    error
}

func newRecordWriter(w io.Writer, pageSize, objectSize int64, version string, start time.Time) (*recordWriter, error) {
	if pageSize < PageSize || pageSize > 1<<30 || pageSize&(pageSize-1) != 0 {
		return nil, fmt.Errorf("record: page size %d: want a power of two from %d to 1 GiB", pageSize, PageSize)
	}
	if objectSize < 0 || objectSize > maxObjectSize {
		return nil, fmt.Errorf("record: memory file size %d out of range", objectSize)
	}
	if len(version) > maxVersionLen {
		return nil, fmt.Errorf("record: version string of %d bytes, more than %d", len(version), maxVersionLen)
	}
	rw := &recordWriter{crc: crc32.New(castagnoli), npages: (objectSize + pageSize - 1) / pageSize,
		prev: -1, seen: make(map[int64]struct{})}
	rw.bw = bufio.NewWriterSize(io.MultiWriter(w, rw.crc), 16<<10)
	var h [recordHeader]byte
	le := binary.LittleEndian
	copy(h[:], recordMagic)
	le.PutUint16(h[8:], recordVersion)
	le.PutUint32(h[12:], uint32(pageSize))
	le.PutUint64(h[16:], uint64(objectSize))
	le.PutUint64(h[24:], uint64(start.UnixNano()))
	le.PutUint16(h[32:], uint16(len(version)))
	rw.bw.Write(h[:])
	rw.bw.WriteString(version)
	return rw, nil
}

// add appends page, first touched at (since the start).
func (w *recordWriter) add(page int64, at time.Duration) error {
	if w.err != nil {
		return w.err
	}
	if page < 0 || page >= w.npages {
		return fmt.Errorf("record: page %d outside the memory file's %d pages", page, w.npages)
	}
	if _, dup := w.seen[page]; dup {
		return fmt.Errorf("record: page %d added twice", page)
	}
	w.seen[page] = struct{}{}
	d := page - w.prev
	var buf [2 * binary.MaxVarintLen64]byte
	n := binary.PutUvarint(buf[:], uint64(d<<1)^uint64(d>>63))
	ms := max(at-w.last, 0) / time.Millisecond
	n += binary.PutUvarint(buf[n:], uint64(ms))
	w.last += ms * time.Millisecond
	w.prev = page
	w.count++
	_, w.err = w.bw.Write(buf[:n])
	return w.err
}

// flush hands what add buffered to the file.
func (w *recordWriter) flush() error {
	if w.err == nil {
		w.err = w.bw.Flush()
	}
	return w.err
}

// finish writes the trailer and flushes.
func (w *recordWriter) finish() error {
	if w.err != nil {
		return w.err
	}
	var t [1 + 8]byte
	binary.LittleEndian.PutUint64(t[1:], w.count) // t[0] is the end marker, 0
	w.bw.Write(t[:])
	if err := w.bw.Flush(); err != nil {
		w.err = err
		return err
	}
	var s [4]byte
	binary.LittleEndian.PutUint32(s[:], w.crc.Sum32())
	w.bw.Write(s[:])
	w.err = w.bw.Flush()
	return w.err
}

// recordFlushEvery is how long an entry may wait in memory before it is
// written to the file: what a crash can lose.
const recordFlushEvery = 50 * time.Millisecond

// recorder records one restore's first touches into a file as they come.
// It is safe for concurrent use.
type recorder struct {
	path  string
	start time.Time

	mu      sync.Mutex // protects the fields below
	f       *os.File
	w       *recordWriter
	pending bool // entries added since the last flush
	timer   *time.Timer
	closed  bool
	err     error // the first write error, reported once at close
}

// newRecorder creates (or truncates) path and writes the header.
func newRecorder(path string, pageSize, objectSize int64, version string, start time.Time) (*recorder, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	w, err := newRecordWriter(f, pageSize, objectSize, version, start)
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := w.flush(); err != nil {
		f.Close()
		return nil, fmt.Errorf("record %s: write the header: %w", path, err)
	}
	return &recorder{path: path, start: start, f: f, w: w}, nil
}

// add records page (in page-size units) as touched now, if it is new.
func (r *recorder) add(page int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.err != nil {
		return
	}
	if _, dup := r.w.seen[page]; dup {
		return
	}
	if err := r.w.add(page, time.Since(r.start)); err != nil {
		r.err = err
		return
	}
	if !r.pending {
		r.pending = true
		r.timer = time.AfterFunc(recordFlushEvery, r.flush)
	}
}

func (r *recorder) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || !r.pending {
		return
	}
	r.pending = false
	if err := r.w.flush(); err != nil && r.err == nil {
		r.err = fmt.Errorf("record %s: %w", r.path, err)
	}
}

// count is the number of pages recorded.
func (r *recorder) count() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.w.count
}

// close finishes the record: trailer, fsync, close.
func (r *recorder) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if r.timer != nil {
		r.timer.Stop()
	}
	err := r.err
	if err == nil {
		if err = r.w.finish(); err == nil {
			err = r.f.Sync()
		}
	}
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("record %s: %w", r.path, err)
	}
	return nil
}
