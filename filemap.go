// Package filemap maps objects — local files, HTTP(S) URLs, S3 objects —
// into memory whose pages are read in on first touch by a handler process,
// through a page cache shared by every process of the same user: the
// kernel's filemap_fault, done in user space with userfaultfd(2).
//
//	m, err := filemap.Open(ctx, "/data/model.bin")
//	if err != nil { ... }
//	defer m.Close()
//	b := m.Bytes() // read-only; pages arrive as they are touched
//
// WithCopyOnWrite makes the mapping writable as the kernel's MAP_PRIVATE
// mapping of a file is: a write goes to a private copy of its page, seen
// by this mapping alone, never by the object or by other mappings.
//
// The handler is the daemon `filemap serve` when FILEMAP_SOCKET (or
// WithSocket) names its socket; otherwise the first Open starts a private
// handler by running the current executable again, recognised by this
// package's init function, and that handler exits with its parent. A
// process never serves its own faults: a goroutine blocked in a page fault
// cannot be preempted, and an in-process handler can deadlock.
//
// The contract is the kernel's. Concurrent faults on a page cause one read.
// An access past the end of the object gets SIGBUS. A page whose read fails
// after retries gets SIGBUS at its address and its neighbours keep working;
// ReadAt turns that into an error naming the offset. A page already in the
// cache costs no I/O and no message.
//
// Mappings are not inherited by fork(2) (they are MADV_DONTFORK): a child
// sees no mapping there rather than one that could plant zero pages in the
// cache shared by others.
package filemap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/filemap/filemap/internal/sigbus"
	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/readahead"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

const ps = pagecache.PageSize

// Advice describes how a mapping will be read, as madvise(2) does.
type Advice = readahead.Advice

// The advice Advise takes.
const (
	Normal     = readahead.Normal     // read-around: the pages around a miss
	Random     = readahead.Random     // the faulting page alone
	Sequential = readahead.Sequential // a large window ahead of a miss
	WillNeed   = readahead.WillNeed   // read the range now, in the background
	DontNeed   = readahead.DontNeed   // drop the range from this mapping
)

// Option configures Open.
type Option func(*options)

type options struct {
	socket   string
	private  handlerSettings // of a private handler, if Open starts one
	advice   Advice
	cow      bool   // writable, copy-on-write
	version  string // the version to map; "" for the current one
	features uint64 // extra userfaultfd features, for tests of the daemon's event handling
	fork     bool   // leave the mapping inheritable by fork(2)
	extra    int64  // bytes mapped past the object's last page, for tests of EOF
}

// WithSocket connects to the daemon listening at path instead of
// FILEMAP_SOCKET or a private handler.
func WithSocket(path string) Option { return func(o *options) { o.socket = path } }

// WithFaultTimeout bounds the time a private handler spends on one fault:
// a page it has not read by then gets SIGBUS, and every request, read and
// retry made for it stops (0 is the handler's default of two minutes;
// negative is no bound). It configures the private handler only: a
// daemon's faults are bounded by its own --fault-timeout. Mappings that
// ask for different bounds get private handlers of their own.
func WithFaultTimeout(d time.Duration) Option {
	return func(o *options) { o.private.faultTimeout = d }
}

// WithAdvice sets the mapping's initial access advice.
func WithAdvice(a Advice) Option { return func(o *options) { o.advice = a } }

// WithCopyOnWrite makes the mapping writable, copy-on-write, as the
// kernel's MAP_PRIVATE mapping of a file is. A write to a page gives this
// mapping a private copy of it, in this process's anonymous memory; the
// object, the shared cache and every other mapping keep the object's
// bytes. Written pages stay when the cache evicts the page they copied;
// Advise(DontNeed) drops them, and the range reads the object again.
func WithCopyOnWrite() Option { return func(o *options) { o.cow = true } }

// WithVersion maps the object at version, as Mapping.Version names it,
// rather than at whatever version it has when Open asks: so that the hosts
// of a fleet map the same bytes. An S3 VersionId opens that version, old
// or current, as long as the bucket keeps it. Any other version (an ETag,
// a file's size and mtime) must still be the object's current one, or
// Open fails, saying which version it has now.
func WithVersion(version string) Option { return func(o *options) { o.version = version } }

// Mapping is an object mapped into memory: read-only, or copy-on-write
// (WithCopyOnWrite).
//
// A mapping outlives its handler. If the daemon dies, its faults wait (the
// mapping holds its own userfaultfd). A daemon restarted on the same socket
// takes the mapping over from its predecessor's keeper and serves those
// faults with no help from this process (server.Keep); a private handler's
// keeper starts the new handler itself. The mapping reconnects, with
// backoff, and resumes its region. Failing that — a daemon that kept
// nothing — it re-opens the object at the version it shows, hands back the
// cache file it maps, so the new handler adopts it warm, and attaches
// again. That path needs this process to run: a Go program all of whose
// threads wait in faults of the mapping, or that starts a garbage
// collection meanwhile, waits for good (see THREAT_MODEL.md).
type Mapping struct {
	uri      string // as the caller wrote it, credentials and all: what the handler opens
	name     string // uri for people, its credentials redacted: in errors and logs
	size     int64
	version  string
	mem      []byte   // the whole mapping, including pages past the object's end
	memfd    *os.File // the cache file this mapping maps
	file     *os.File // a local object, as this process opened it; nil for a remote one
	u        *uffd.UFFD
	features uint64          // negotiated in UFFDIO_API
	cow      bool            // writable, copy-on-write
	socket   string          // from WithSocket; "" for $FILEMAP_SOCKET or the private handler
	private  handlerSettings // the private handler's, if it is one

	ctx     context.Context // cancelled by Close: stops reconnecting
	cancel  context.CancelFunc
	watched chan struct{} // closed when the goroutine that keeps the mapping attached ends

	mu     sync.Mutex
	c      *client // the current connection to the handler
	handle uint64
	region uint64
	advice Advice // the last of Normal, Random, Sequential: re-sent on re-attaching
	closed bool
}

// Open maps the object named by uri: a path, a file:// URI, an http:// or
// https:// URL, or s3://BUCKET/KEY. Everything that can be checked before
// the first fault is checked here: a bad URI, a missing or unreadable file,
// a directory, a file that reports size 0 but has bytes (/proc/self/status,
// which mmap(2) refuses too), a missing object or one whose server does not serve byte
// ranges are errors from Open, never SIGBUS later. A local file is opened
// with the caller's own credentials and handed to the handler, which never
// opens it with its own. A remote object is fetched by the handler, with its
// credentials (the daemon's, or the caller's environment for a private
// handler), and its version (ETag, VersionId) is pinned here: the mapping
// never shows bytes of another version.
func Open(ctx context.Context, uri string, opts ...Option) (*Mapping, error) {
	o := options{advice: Normal}
	for _, f := range opts {
		f(&o)
	}
	u, err := store.ParseURI(uri)
	if err != nil {
		return nil, fmt.Errorf("filemap: %w", err)
	}
	var f *os.File // a remote object is fetched by the handler: no fd
	if u.Scheme == "file" {
		if f, err = store.OpenLocal(u.Path); err != nil {
			return nil, fmt.Errorf("filemap: %w", err)
		}
	}
	c, err := connect(ctx, o.socket, o.private)
	if err != nil {
		closeFile(f)
		return nil, openError(u.Name(), err)
	}
	m, err := mapObject(ctx, c, handlerURI(u), f, o)
	if err != nil {
		c.close()
		closeFile(f)
		return nil, openError(u.Name(), err)
	}
	go m.keepAttached(c)
	return m, nil
}

// handlerURI is u as the handler is told it, and as the mapping names it:
// a bare path made absolute, since the handler's working directory is not
// this process's; a URI as written.
func handlerURI(u store.URI) store.URI {
	if u.Scheme == "file" && !strings.Contains(u.Raw, "://") {
		u.Raw = u.Path
	}
	return u
}

// openError is err of the Open of the object called name. It names the
// object unless err does already: the handler's errors and the stores' name
// it themselves, as os.PathError does, and a name said twice or three times
// in one line only hides what went wrong.
func openError(name string, err error) error {
	if strings.Contains(err.Error(), name) {
		return fmt.Errorf("filemap: %w", err)
	}
	return fmt.Errorf("filemap: open %s: %w", name, err)
}

func mapObject(ctx context.Context, c *client, u store.URI, f *os.File, o options) (*Mapping, error) {
	var or proto.OpenReply
	var send []*os.File
	if f != nil {
		send = []*os.File{f}
	}
	fds, err := c.call(ctx, proto.TOpen, proto.Open{URI: u.Raw, Version: o.version}, send, &or)
	if err != nil {
		return nil, err
	}
	if len(fds) != 1 {
		closeFiles(fds)
		return nil, fmt.Errorf("daemon sent %d descriptors with the cache, want 1", len(fds))
	}
	m := &Mapping{uri: u.Raw, name: u.Name(), size: or.Size, version: or.Version, memfd: fds[0], file: f, socket: o.socket, private: o.private, cow: o.cow,
		c: c, handle: or.Handle, advice: o.advice, watched: make(chan struct{})}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if err := m.setup(ctx, o); err != nil {
		m.file = nil // the caller closes it
		m.teardown()
		return nil, err
	}
	return m, nil
}

// setup maps the cache, registers the mapping with a new userfaultfd and
// hands a copy of that uffd to the handler.
func (m *Mapping) setup(ctx context.Context, o options) error {
	length := max((m.size+ps-1)/ps*ps, ps) + (o.extra+ps-1)/ps*ps
	// The daemon sends the cache read-only, so no client can write into the
	// pages others share. userfaultfd registers only mappings that may be
	// written (VM_MAYWRITE), which a shared mapping of a read-only fd is not;
	// a private one is, and its reads still map the shared cache's pages.
	// A write to a private mapping copies the page into anonymous memory
	// (do_cow_fault); a write to a page the cache lacks faults to the
	// handler first, like a read. So copy-on-write needs only PROT_WRITE.
	prot := unix.PROT_READ
	if o.cow {
		prot |= unix.PROT_WRITE
	}
	mem, err := unix.Mmap(int(m.memfd.Fd()), 0, int(length), prot, unix.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("mmap %d bytes of the cache: %w", length, err)
	}
	m.mem = mem
	if !o.fork {
		if err := unix.Madvise(mem, unix.MADV_DONTFORK); err != nil {
			return fmt.Errorf("madvise(MADV_DONTFORK): %w", err)
		}
	}
	// Kernel-mode accesses (a write(2) from the mapping) must fault too, so
	// no UserModeOnly.
	m.u, err = uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		return err
	}
	if m.features, err = m.u.API(o.features, o.features); err != nil {
		return err
	}
	addr := uintptr(unsafe.Pointer(&mem[0]))
	if _, err := m.u.Register(addr, uintptr(len(mem)), uffd.ModeMissing); err != nil {
		return err
	}
	m.region, err = m.attach(ctx, m.c, m.handle, o.advice)
	return err
}

// attach hands the handler at c a copy of the mapping's uffd, to serve its
// faults. Ours stays open, so if the handler dies our faults stall instead
// of reading zeros, and the next handler gets a copy of the same uffd.
func (m *Mapping) attach(ctx context.Context, c *client, handle uint64, advice Advice) (uint64, error) {
	dup, err := unix.FcntlInt(uintptr(m.u.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("dup uffd: %w", err)
	}
	uf := os.NewFile(uintptr(dup), "uffd")
	defer uf.Close()
	var ar proto.AttachReply
	_, err = c.call(ctx, proto.TAttach, proto.Attach{
		Handle: handle, Addr: uint64(uintptr(unsafe.Pointer(&m.mem[0]))), Len: uint64(len(m.mem)),
		Features: m.features, Advice: advice.String(),
	}, []*os.File{uf}, &ar)
	return ar.Region, err
}

// Bytes is the object's bytes: read-only, or writable if the mapping was
// opened WithCopyOnWrite. Touching a page the cache does not hold blocks
// until the handler has read it; a page that cannot be read raises SIGBUS,
// which Guard turns into an error.
func (m *Mapping) Bytes() []byte { return m.mem[:m.size:m.size] }

// Size is the object's length in bytes.
func (m *Mapping) Size() int64 { return m.size }

// Version names the bytes the mapping shows (for a file, its size and mtime
// when the cache was made).
func (m *Mapping) Version() string { return m.version }

// ReadAt copies bytes from the mapping, so a Mapping is an io.ReaderAt. It
// first populates the range with MADV_POPULATE_READ: a goroutine waiting for
// a slow store then waits in a system call, where the garbage collector and
// the scheduler need nothing from it. A page that cannot be read is an error
// naming its offset, and the next ReadAt of it reads it again.
func (m *Mapping) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("filemap: %s: ReadAt at negative offset %d", m.name, off)
	}
	if off >= m.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), m.size-off))
	if n > 0 {
		if bad, err := m.populate(off, int64(n), unix.MADV_POPULATE_READ); err != nil {
			got := copy(p, m.mem[off:bad])
			return got, err
		}
		if err := m.Guard(func() { copy(p[:n], m.mem[off:]) }); err != nil {
			return 0, err
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt copies p into a copy-on-write mapping at off, so such a Mapping
// is an io.WriterAt; the object is not written. As ReadAt does, it first
// faults the range in, with MADV_POPULATE_WRITE, so a goroutine waiting
// for the store waits in a system call. The mapping does not grow: the
// bytes of p past the object's end are not written, and are an error.
func (m *Mapping) WriteAt(p []byte, off int64) (int, error) {
	if !m.cow {
		return 0, fmt.Errorf("filemap: %s: WriteAt: the mapping is read-only (open it WithCopyOnWrite)", m.name)
	}
	if off < 0 || off > m.size {
		return 0, fmt.Errorf("filemap: %s: WriteAt at offset %d, outside the object (size %d)", m.name, off, m.size)
	}
	n := int(min(int64(len(p)), m.size-off))
	if n > 0 {
		if bad, err := m.populate(off, int64(n), unix.MADV_POPULATE_WRITE); err != nil {
			got := copy(m.mem[off:bad], p)
			return got, err
		}
		if err := m.Guard(func() { copy(m.mem[off:], p[:n]) }); err != nil {
			return 0, err
		}
	}
	if n < len(p) {
		return n, fmt.Errorf("filemap: %s: WriteAt of %d bytes at offset %d: past the object's end (size %d)", m.name, len(p), off, m.size)
	}
	return n, nil
}

// populate faults in [off, off+n) with advice, MADV_POPULATE_READ or
// MADV_POPULATE_WRITE. On failure it finds the first page that cannot be
// read, clears its poison so that the next access retries, and returns its
// offset.
func (m *Mapping) populate(off, n int64, advice int) (int64, error) {
	start, end := off&^(ps-1), (off+n+ps-1)&^(ps-1)
	if err := populateRange(m.mem[start:end], advice); err == nil {
		return 0, nil
	}
	for p := start; p < end; p += ps {
		if err := populateRange(m.mem[p:p+ps], advice); err != nil {
			unix.Madvise(m.mem[p:p+ps], unix.MADV_DONTNEED) // drop the poison marker: errors are not sticky
			return max(p, off), fmt.Errorf("filemap: %s: cannot read the page at offset %d: %w", m.name, p, err)
		}
	}
	return 0, nil // it failed, then worked: a transient error
}

func populateRange(b []byte, advice int) error {
	for {
		err := unix.Madvise(b, advice)
		if err != unix.EINTR && err != unix.EAGAIN {
			return err
		}
	}
}

// FaultError is a page of a mapping that could not be read: the SIGBUS of
// an access to it, caught by Guard.
type FaultError struct {
	URI    string // the object, its credentials redacted (store.Redact)
	Offset int64  // the byte the access faulted on
}

func (e *FaultError) Error() string {
	return fmt.Sprintf("filemap: %s: cannot read the page at offset %d (SIGBUS at byte %d)", e.URI, e.Offset&^(ps-1), e.Offset)
}

// Guard runs f, which reads m.Bytes(). If f touches a page that cannot be
// read, the SIGBUS stops f and Guard returns a *FaultError naming the
// offset; the page is cleared from this mapping, so a later access reads
// it again. Faults elsewhere than this mapping are not caught.
func (m *Mapping) Guard(f func()) error {
	off, faulted := sigbus.Catch(m.mem, f)
	if !faulted {
		return nil
	}
	page := off &^ (ps - 1)
	unix.Madvise(m.mem[page:page+ps], unix.MADV_DONTNEED) // drop the poison marker: errors are not sticky
	return &FaultError{URI: m.name, Offset: off}
}

// Advise tells the handler how [off, off+length) will be read; length 0
// means to the end. Normal, Random and Sequential apply to the whole
// mapping's future misses. WillNeed reads the range in the background.
// DontNeed drops the range's pages from this mapping (not from the shared
// cache): the next access maps them again, with no I/O if still cached;
// in a copy-on-write mapping, the pages written are dropped too, and the
// range reads the object's bytes again, as MADV_DONTNEED does to a
// private mapping of a file.
func (m *Mapping) Advise(a Advice, off, length int64) error {
	if off < 0 || length < 0 || off > m.size {
		return fmt.Errorf("filemap: %s: advise %v: bad range offset %d length %d (size %d)", m.name, a, off, length, m.size)
	}
	if length == 0 || off+length > m.size {
		length = m.size - off
	}
	if a == DontNeed && length > 0 {
		start, end := off&^(ps-1), min((off+length+ps-1)&^(ps-1), int64(len(m.mem)))
		if err := unix.Madvise(m.mem[start:end], unix.MADV_DONTNEED); err != nil {
			return fmt.Errorf("filemap: %s: madvise(MADV_DONTNEED) [%d, %d): %w", m.name, start, end, err)
		}
	}
	m.mu.Lock()
	if a == Normal || a == Random || a == Sequential {
		m.advice = a
	}
	c, region := m.c, m.region
	m.mu.Unlock()
	_, err := c.call(context.Background(), proto.TAdvise, proto.Advise{Region: region, Advice: a.String(), Offset: off, Length: length}, nil, nil)
	if errors.Is(err, errLost) {
		// Advice is a hint. The mapping's access pattern goes to the next
		// handler when the mapping re-attaches; a WillNeed is dropped.
		return nil
	}
	if err != nil {
		return fmt.Errorf("filemap: %s: advise %v: %w", m.name, a, err)
	}
	return nil
}

// Close unmaps the object. Bytes must not be used after it.
func (m *Mapping) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	<-m.watched // no re-attach runs now, nor starts
	var err error
	if m.region != 0 {
		_, err = m.c.call(context.Background(), proto.TDetach, proto.Detach{Region: m.region}, nil, nil)
	}
	m.teardown()
	if err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, errLost) {
		return fmt.Errorf("filemap: close %s: %w", m.name, err)
	}
	return nil
}

func (m *Mapping) teardown() {
	if m.mem != nil {
		unix.Munmap(m.mem)
		m.mem = nil
	}
	if m.u != nil {
		m.u.Close()
	}
	m.memfd.Close()
	closeFile(m.file)
	m.c.close()
}

// Stats are a handler's counters.
type Stats = proto.Stats

// Stat returns the counters of the handler that Open would use with the
// same options.
func Stat(ctx context.Context, opts ...Option) (Stats, error) {
	var st Stats
	err := handlerCall(ctx, proto.TStat, opts, &st)
	return st, err
}

// ObjectStat is one object's cache in a handler.
type ObjectStat = proto.ObjectStat

// CachedObjects lists the objects whose caches the handler that Open would
// use with the same options holds, the most cached first: this user's, or
// every user's when the caller is root.
func CachedObjects(ctx context.Context, opts ...Option) ([]ObjectStat, error) {
	var objs proto.Objects
	err := handlerCall(ctx, proto.TObjects, opts, &objs)
	return objs.Objects, err
}

// Dropped says what DropCaches emptied.
type Dropped = proto.Dropped

// DropCaches empties the caches of the handler that Open would use with the
// same options, as writing 3 to /proc/sys/vm/drop_caches does for the
// kernel's: every mapping's next access to a page reads the store again.
// A daemon empties the caches of the caller's uid only; every uid's if the
// caller is root.
func DropCaches(ctx context.Context, opts ...Option) error {
	_, err := DropCachesCounted(ctx, opts...)
	return err
}

// DropCachesCounted is DropCaches, and says what the handler dropped.
func DropCachesCounted(ctx context.Context, opts ...Option) (Dropped, error) {
	var d Dropped
	err := handlerCall(ctx, proto.TDrop, opts, &d)
	return d, err
}

// handlerCall makes one request that takes no arguments on a connection of
// its own.
func handlerCall(ctx context.Context, t proto.Type, opts []Option, reply any) error {
	var o options
	for _, f := range opts {
		f(&o)
	}
	c, err := connect(ctx, o.socket, o.private)
	if err != nil {
		return fmt.Errorf("filemap: %v: %w", t, err)
	}
	defer c.close()
	if _, err := c.call(ctx, t, proto.Empty{}, nil, reply); err != nil {
		return fmt.Errorf("filemap: %v: %w", t, err)
	}
	return nil
}

func closeFile(f *os.File) {
	if f != nil {
		f.Close()
	}
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
