package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/filemap/filemap/fault"
	"github.com/filemap/filemap/internal/delayed"
	"github.com/filemap/filemap/internal/fdstore"
	"github.com/filemap/filemap/metrics"
	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/reclaim"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

// Defaults of Config.
const (
	// DefaultReadahead is the read-around window of a miss, in 4 KiB
	// pages: 64 KiB. A guest's first touches after a restore are
	// scattered, but not uniformly: the kernel's allocator hands out
	// neighbouring pages and a process's memory comes in runs. On a 1 GiB
	// image whose working set is 10 % of it in clusters of 1–8 pages
	// (BenchmarkRestore), reading the faulting page alone took 8.2–8.7 s
	// (a random 4 KiB read costs ~300 µs on this disk) and 64 KiB around
	// it 3.5–3.9 s; 128 and 256 KiB were no faster in repeated runs
	// (2.9–6.5 s, the disk's noise) while reading 1.5 and 2.2 times the
	// bytes into the cache.
	DefaultReadahead = 16
	// DefaultCopyAround is how many cached neighbours of a fault, in its
	// aligned block of this many 4 KiB pages, are copied into the guest
	// with it: none. In copy mode each page copied in is guest memory
	// spent; on the benchmark above, copying the rest of each 64 KiB block
	// cut the restore from 3.5 s to 2.9 s but put 2.5 pages the guest
	// never touched into it for each page it did.
	DefaultCopyAround = 1

	DefaultPrefetchBatch    = 128 // pages of 4 KiB per prefetch batch
	DefaultPrefetchAhead    = 4   // batches fetched ahead of the one being installed
	DefaultPrefetchParallel = 32  // store reads a prefetch keeps in flight
	DefaultHandshakeTimeout = 10 * time.Second
)

// Config tunes a Server.
type Config struct {
	// Open opens the memory file at its current version. It is called for
	// each restore: VMs restored from the same version share one cache,
	// and a new version gets a new one.
	Open func(ctx context.Context) (store.Store, error)
	// Name is the memory file's name in logs (its URI, credentials redacted: store.Redact).
	Name string
	// Pinned, if set, is a version of the memory file that never changes
	// (an S3 VersionId) and that Open opens. A restore that finds the
	// cache of that version open uses it without calling Open, which asks
	// the store (a HEAD to S3, tens of milliseconds of the restore).
	Pinned string

	// ReadaheadPages is the read-around window of a miss in 4 KiB pages
	// (DefaultReadahead if 0; 1 reads the faulting page alone), and
	// ReadaheadMaxPages the largest window a sequential stream ramps up to.
	ReadaheadPages    int64
	ReadaheadMaxPages int64
	// CopyAround, a power of two, is the block of 4 KiB pages around a
	// fault whose pages already in the cache are copied into the guest
	// with it (DefaultCopyAround if 0; 1 copies the faulting page alone).
	CopyAround int64

	// CacheBytes bounds the bytes the cache holds; 0 is no limit.
	// CachePolicy picks what to evict (reclaim.S3FIFO if empty).
	CacheBytes  int64
	CachePolicy reclaim.Policy
	// Retries is how many times a failing page is read again before the
	// faulting access gets SIGBUS (fault.DefaultRetries if 0, none if
	// negative), the first after RetryBackoff (fault.DefaultRetryBackoff
	// if 0), doubling.
	Retries      int
	RetryBackoff time.Duration
	// FaultTimeout bounds a fault's time, from its message to its page or
	// its SIGBUS, every read and retry for it included
	// (fault.DefaultTimeout if 0; none if negative).
	FaultTimeout time.Duration
	// ReadaheadInflight bounds the bytes of readahead and prefetch reads
	// of a local memory file in flight, so that a vCPU's fault finds the
	// disk's queue short (fault.Config.ReadaheadInflight): the default if
	// 0, no bound if negative.
	ReadaheadInflight int64

	// Record, if set, is the file the first restore's first-touch order
	// is written to (see EncodeRecord), as it happens; it is finished
	// when that VM disconnects or the server closes.
	Record string
	// Prefetch, if set, is a record whose pages every restore fetches
	// and copies into the guest ahead of its touches, in recorded order,
	// PrefetchBatch 4 KiB pages at a time, the guest's own faults first.
	// PrefetchAhead batches are fetched ahead, with PrefetchParallel
	// store reads in flight. From a store that fetches in chunks
	// (store/remote), chunks are fetched instead, as many at once as the
	// store's readahead asks (at least PrefetchAhead), and installed as
	// they arrive.
	Prefetch         string
	PrefetchBatch    int
	PrefetchAhead    int
	PrefetchParallel int
	// Progress, if set, is a terminal that shows a progress line of each
	// prefetch, rewritten in place and erased when the prefetch is over.
	Progress io.Writer

	// Spin is how long a VM's handler polls its userfaultfd before it
	// sleeps: a fault that arrives meanwhile saves waking a sleeping
	// thread, which on an idle virtual CPU costs tens of microseconds.
	// It burns that much CPU after each burst of faults. 0 never spins.
	Spin time.Duration

	// HandshakeTimeout bounds the wait for a VMM's regions and
	// userfaultfd after it connects (DefaultHandshakeTimeout if 0).
	HandshakeTimeout time.Duration

	Log *slog.Logger // slog.Default() if nil

	// WrapStore, if set, wraps every store opened: tests count reads.
	WrapStore func(store.Store) store.Store
	// THPSysfs is where shmem's huge page settings are read
	// (pagecache.THPSysfs if empty).
	THPSysfs string
}

// Server serves the VMs restored from one memory file. It is safe for
// concurrent use.
type Server struct {
	cfg      Config
	log      *slog.Logger
	faults   *fault.Handler
	counters fault.Counters
	budget   *reclaim.Budget
	metrics  *metrics.Metrics
	guard    *uffd.UFFD     // arms the cache views: a hole reads as EFAULT; nil without userfaultfd
	zeros    unsafe.Pointer // HugePageSize bytes of zeros, the source of removed huge pages
	record   *Record        // the decoded Config.Prefetch, or nil
	nextID   atomic.Uint64
	n        counts

	conns     sync.WaitGroup
	adopted   sync.WaitGroup // VMs taken from a previous handler's keeper, running
	closeOnce sync.Once

	mu        sync.Mutex // protects the fields below, and each object's refs
	objects   map[objectKey]*cachedObject
	vms       map[*vm]struct{}
	pending   map[*net.UnixConn]struct{} // in their handshake
	listeners []net.Listener
	keeper    *fdstore.Store // where VMs outlive the handler (keep.go); nil unless Keep was called
	recorded  bool           // Config.Record was given to a VM
	closed    bool
	freed     delayed.List[*cachedObject] // dropped from objects, to be closed once mu is released (unlock)
}

// counts are the server's own counters, beside the fault path's.
type counts struct {
	restores, rejected                atomic.Uint64
	faults, copied, around            atomic.Uint64
	zeroed, removes, deferred, refill atomic.Uint64
	prefetched, late, wasted          atomic.Uint64
	prefetching                       atomic.Int64
}

// objectKey names a cache: the memory file at one version. Unlike `filemap
// serve`, no uid is part of it: VMs never map the cache, the handler copies
// out of it, so a guest cannot plant a page in it for another.
type objectKey struct{ key, version string }

// cachedObject is the cache of one version of the memory file, and the
// handler's view of it.
type cachedObject struct {
	key  objectKey
	file fault.File
	view unsafe.Pointer // the cache file, mapped shared and read-only: UFFDIO_COPY's source
	size uintptr        // of the view
	refs int            // protected by Server.mu
}

// New makes a server. It refuses a kernel whose shmem huge page settings
// would make the cache hand out zeros, and a Prefetch record that does not
// decode.
func New(cfg Config) (*Server, error) {
	if cfg.Open == nil {
		return nil, errors.New("firecracker: Config.Open is nil: no memory file")
	}
	if err := pagecache.CheckTHP(cfg.THPSysfs); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.ReadaheadPages <= 0 {
		cfg.ReadaheadPages = DefaultReadahead
	}
	switch {
	case cfg.CopyAround <= 0:
		cfg.CopyAround = DefaultCopyAround
	case cfg.CopyAround&(cfg.CopyAround-1) != 0:
		return nil, fmt.Errorf("firecracker: copy-around %d pages is not a power of two", cfg.CopyAround)
	}
	if cfg.PrefetchBatch <= 0 {
		cfg.PrefetchBatch = DefaultPrefetchBatch
	}
	if cfg.PrefetchAhead <= 0 {
		cfg.PrefetchAhead = DefaultPrefetchAhead
	}
	if cfg.PrefetchParallel <= 0 {
		cfg.PrefetchParallel = DefaultPrefetchParallel
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if err := cfg.CachePolicy.Check(); err != nil {
		return nil, fmt.Errorf("firecracker: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Log, objects: make(map[objectKey]*cachedObject), vms: make(map[*vm]struct{}),
		pending: make(map[*net.UnixConn]struct{})}
	if cfg.Prefetch != "" {
		b, err := os.ReadFile(cfg.Prefetch)
		if err != nil {
			return nil, fmt.Errorf("firecracker: prefetch: %w", err)
		}
		if s.record, err = DecodeRecord(b); err != nil {
			return nil, fmt.Errorf("firecracker: prefetch %s: %w", cfg.Prefetch, err)
		}
		if !s.record.Complete {
			s.log.Warn("firecracker: the prefetch record is a prefix (its writer did not finish); replaying what it holds",
				"record", cfg.Prefetch, "pages", len(s.record.Pages))
		}
	}
	guard, err := newGuard()
	if err != nil {
		// Without the guard a copy racing an eviction could read a hole of
		// the cache, which reads as zeros, and hand the guest zeros: keep
		// everything instead.
		if cfg.CacheBytes > 0 {
			s.log.Warn("firecracker: no userfaultfd to guard the cache views; the cache will not be bounded", "err", err)
			cfg.CacheBytes = 0
		}
	}
	s.guard = guard
	zeros, err := unix.MmapPtr(-1, 0, nil, HugePageSize, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		if guard != nil {
			guard.Close()
		}
		return nil, fmt.Errorf("firecracker: map a zero page: %w", err)
	}
	s.zeros = zeros
	s.cfg = cfg
	s.budget, _ = fault.NewBudget(cfg.CacheBytes, cfg.CachePolicy) // the policy is checked above
	s.metrics = metrics.New(s.protoStats)
	s.faults = fault.NewHandler(fault.Config{
		ReadaheadPages:    cfg.ReadaheadPages,
		ReadaheadMaxPages: cfg.ReadaheadMaxPages,
		Retries:           cfg.Retries,
		RetryBackoff:      cfg.RetryBackoff,
		Timeout:           cfg.FaultTimeout,
		Log:               cfg.Log,
		Budget:            s.budget,
		Observer:          fillObserver{s.metrics},

		ReadaheadInflight: cfg.ReadaheadInflight,
	}, &s.counters)
	return s, nil
}

// newGuard makes the userfaultfd that arms the handler's views of its
// caches. Registered for MISSING faults, it turns a read of a hole — a
// page evicted between the lookup that found it and the UFFDIO_COPY that
// reads it — into SIGBUS, and a kernel-mode read (UFFDIO_COPY's
// copy_from_user) into EFAULT: the copy fails instead of reading a zero
// page, and instead of planting one in the cache file, as a read fault on a
// shmem hole would. UFFD_FEATURE_SIGBUS makes user-mode reads fail the same
// way, so the descriptor never has a message to read; user-mode-only is
// enough, as a kernel-mode fault on it gets SIGBUS too, and lets an
// unprivileged handler have one.
func newGuard() (*uffd.UFFD, error) {
	u, err := uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK | uffd.UserModeOnly)
	if err != nil {
		if u, err = uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK); err != nil {
			return nil, err
		}
	}
	if _, err := u.API(0, uffd.FeatureSigbus); err != nil {
		u.Close()
		return nil, err
	}
	// Try it on a page of a memfd, as the caches will be.
	fd, err := unix.MemfdCreate("filemap:guard-probe", unix.MFD_CLOEXEC)
	if err != nil {
		u.Close()
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, pagecache.PageSize); err != nil {
		u.Close()
		return nil, fmt.Errorf("ftruncate: %w", err)
	}
	view, err := mapGuarded(u, fd, pagecache.PageSize)
	if err != nil {
		u.Close()
		return nil, err
	}
	unix.MunmapPtr(view, pagecache.PageSize)
	return u, nil
}

// fillObserver passes the fault path's observations to the metrics, except
// its fault latencies: in copy mode a fault is served when its copy is
// done, and the VM handler observes that itself.
type fillObserver struct{ m *metrics.Metrics }

func (fillObserver) Fault(string, time.Duration) {}
func (o fillObserver) StoreRead(d time.Duration, n int, err error) {
	o.m.StoreRead(d, n, err)
}
func (o fillObserver) Readahead(pages int64) { o.m.Readahead(pages) }
func (o fillObserver) Changed(object string) { o.m.Changed(object) }

// Serve accepts VMMs on l until l or the server is closed. The socket must
// exist before the VMM is told to restore: Firecracker connects once.
func (s *Server) Serve(l *proto.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	return proto.Accept(l.UnixListener, s.log, s.ServeConn)
}

// ServeConn serves one VMM: the handshake, then its faults until it
// disconnects. A bad handshake is logged and closes this connection only.
func (s *Server) ServeConn(c *net.UnixConn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns.Add(1)
	s.pending[c] = struct{}{}
	s.mu.Unlock()
	defer s.conns.Done()
	id := s.nextID.Add(1)
	log := s.log.With("vm", id)
	pid := 0
	if cred, err := proto.PeerCred(c); err == nil {
		log = log.With("pid", cred.Pid, "uid", cred.Uid)
		pid = int(cred.Pid)
	}
	v, err := s.restore(c, id, log)
	s.mu.Lock()
	delete(s.pending, c)
	s.mu.Unlock()
	if err != nil {
		s.n.rejected.Add(1)
		log.Error("firecracker: closing the connection: bad handshake", "err", err)
		c.Close()
		return
	}
	v.pid = pid
	v.keep()
	s.runVM(v)
}

// runVM serves a restored VM until its VMM disconnects or the server
// closes.
func (s *Server) runVM(v *vm) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		v.shutdown()
	} else {
		s.vms[v] = struct{}{}
		s.mu.Unlock()
	}
	v.run()
	s.mu.Lock()
	delete(s.vms, v)
	k, closing := s.keeper, s.closed
	s.mu.Unlock()
	if k != nil && !closing {
		k.Delete(v.id) // the VMM is gone; a handler that stops leaves its VMs to the next
	}
	s.release(v.obj)
}

// restore takes the handshake and makes the VM's handler.
func (s *Server) restore(c *net.UnixConn, id uint64, log *slog.Logger) (*vm, error) {
	payload, fd, err := recvHandshake(c, s.cfg.HandshakeTimeout, log)
	if err != nil {
		return nil, err
	}
	o, err := s.acquire(context.Background())
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open the memory file %s: %w", s.cfg.Name, err)
	}
	regions, err := ParseRegions(payload, o.file.Cache.Size())
	if err != nil {
		unix.Close(fd)
		s.release(o)
		return nil, fmt.Errorf("%w (memory file %s, %d bytes; received %s)", err, s.cfg.Name, o.file.Cache.Size(), clip(payload))
	}
	v, err := newVM(s, id, log, c, fd, o, regions, true, nil)
	if err != nil {
		s.release(o)
		return nil, err
	}
	v.payload = payload
	s.n.restores.Add(1)
	return v, nil
}

// takeRecord hands Config.Record to the first VM that asks.
func (s *Server) takeRecord() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.Record == "" || s.recorded || s.closed {
		return false
	}
	s.recorded = true
	return true
}

// acquire opens the memory file and returns the cache of its current
// version, making it if needed: the cache of the pinned version, if it is
// open already, without opening the file.
func (s *Server) acquire(ctx context.Context) (*cachedObject, error) {
	if o := s.pinnedCache(); o != nil {
		return o, nil
	}
	st, err := s.cfg.Open(ctx)
	if err != nil {
		return nil, err
	}
	if s.cfg.WrapStore != nil {
		st = s.cfg.WrapStore(st)
	}
	k := objectKey{key: st.Key(), version: st.Version()}
	s.mu.Lock()
	defer s.unlock() // and closes the caches of old versions it frees
	if o, ok := s.objects[k]; ok {
		st.Close() // the cache has a store of these very bytes already
		o.refs++
		return o, nil
	}
	cache, err := pagecache.New(s.cfg.Name, st.Size())
	if err != nil {
		st.Close()
		return nil, err
	}
	o := &cachedObject{key: k, file: fault.File{Cache: cache, Store: st}, refs: 1}
	if err := s.mapView(o); err != nil {
		cache.Close()
		st.Close()
		return nil, err
	}
	// Caches of other versions that no VM uses any more will not be
	// asked for again.
	for ok, old := range s.objects {
		if ok.key == k.key && old.refs == 0 {
			s.freeLocked(old)
		}
	}
	s.objects[k] = o
	return o, nil
}

// pinnedCache returns the cache of Config.Pinned, counting a reference to
// it, if there is one.
func (s *Server) pinnedCache() *cachedObject {
	if s.cfg.Pinned == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, o := range s.objects {
		if k.version == s.cfg.Pinned {
			o.refs++
			return o
		}
	}
	return nil
}

// mapView maps o's cache file into the handler, shared and read-only, and
// arms the mapping with the guard: UFFDIO_COPY reads the guest's pages from
// there, so a page is copied from the cache with no copy of our own.
func (s *Server) mapView(o *cachedObject) error {
	n := uintptr(o.file.Cache.NPages()) * pagecache.PageSize
	if n == 0 {
		return nil
	}
	f, err := openWritable(o.file.Cache)
	if err != nil {
		return err
	}
	defer f.Close()
	view, err := mapGuarded(s.guard, int(f.Fd()), n)
	if err != nil {
		return fmt.Errorf("the cache of %s: %w", o.file.Cache.Name(), err)
	}
	o.view, o.size = view, n
	return nil
}

// openWritable opens the cache file for reading and writing, through the
// read-only descriptor the cache hands out. The view is mapped read-only
// all the same, but userfaultfd registers a shared mapping only if it
// could be made writable (VM_MAYWRITE): a MAP_SHARED mapping of an
// O_RDONLY descriptor is refused with EPERM.
func openWritable(c *pagecache.Cache) (*os.File, error) {
	ro, err := c.ReadOnlyFile()
	if err != nil {
		return nil, err
	}
	defer ro.Close()
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", ro.Fd()), os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reopen the cache file of %s: %w", c.Name(), err)
	}
	return f, nil
}

// mapGuarded maps n bytes of fd shared and read-only, registered with guard
// if there is one.
func mapGuarded(guard *uffd.UFFD, fd int, n uintptr) (unsafe.Pointer, error) {
	view, err := unix.MmapPtr(fd, 0, nil, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes: %w", n, err)
	}
	unix.Madvise(unsafe.Slice((*byte)(view), n), unix.MADV_DONTDUMP)
	if guard != nil {
		if _, err := guard.Register(uintptr(view), n, uffd.ModeMissing); err != nil {
			unix.MunmapPtr(view, n)
			return nil, fmt.Errorf("guard the view: %w", err)
		}
	}
	return view, nil
}

// release drops a VM's reference. The cache stays, for the next restore.
func (s *Server) release(o *cachedObject) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o.refs--
}

// freeLocked drops a cache that no VM uses: no restore finds it any more.
// It is closed by unlock, once s.mu is released: closing a store waits for
// its requests to end, and no restore or stat must wait with it.
func (s *Server) freeLocked(o *cachedObject) {
	delete(s.objects, o.key)
	s.freed.Add(o)
}

// unlock releases s.mu and closes the caches freed under it.
func (s *Server) unlock() {
	s.freed.Unlock(&s.mu, func(o *cachedObject) { o.close(s.budget) })
}

// close releases the view, cache and store of an object that has been
// freed.
func (o *cachedObject) close(budget *reclaim.Budget) {
	budget.Forget(o.file.Cache)
	if o.view != nil {
		unix.MunmapPtr(o.view, o.size) // unregisters it from the guard too
	}
	o.file.Cache.Close()
	o.file.Store.Close()
}

// Close stops accepting and serving: every VM's handler stops (a guest
// that faults afterwards stalls on its VMM's own copy of the userfaultfd),
// the record is finished, and the caches are dropped. Every caller returns
// once that is done.
func (s *Server) Close() error {
	s.closeOnce.Do(s.close)
	return nil
}

func (s *Server) close() {
	s.mu.Lock()
	s.closed = true
	for _, l := range s.listeners {
		l.Close()
	}
	for v := range s.vms {
		v.shutdown()
	}
	for c := range s.pending {
		c.Close()
	}
	k := s.keeper
	s.mu.Unlock()
	s.conns.Wait()
	s.adopted.Wait()
	if k != nil {
		k.Close(false) // the VMs wait there for the next handler
	}
	s.mu.Lock()
	for _, o := range s.objects {
		s.freeLocked(o)
	}
	s.unlock()
	if s.guard != nil {
		s.guard.Close()
	}
	unix.MunmapPtr(s.zeros, HugePageSize)
}

// Metrics are the server's metrics, for --metrics.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

// Stats are a server's counters since it started.
type Stats struct {
	VMs      int    // VMs being served now
	Restores uint64 // handshakes accepted
	Rejected uint64 // connections closed for a bad handshake

	Faults     uint64 // page-fault messages from guests (a fault re-raised by a signal counts again)
	Copied     uint64 // pages (of the guest's page size) copied in for faults
	CopyAround uint64 // neighbours copied in with them
	ZeroFilled uint64 // faults on removed (ballooned) memory, filled with zeros
	Removes    uint64 // UFFD_EVENT_REMOVE events
	Deferred   uint64 // faults retried later: a copy met EAGAIN (an event was pending)
	Refilled   uint64 // copies that found their page evicted from the cache, and read it again

	Prefetched     uint64 // pages a replay copied in ahead of the guest
	PrefetchLate   uint64 // pages of a replay the guest faulted on before the replay got there
	PrefetchWasted uint64 // estimated pages a replay copied in that the guest never touched (counted at exit)
	Prefetching    int    // VMs whose replay is still running

	Major, Minor, Sigbus   uint64 // the fault path's: faults that read the store, that did not, poisoned
	StoreReads, StoreBytes uint64
	CacheBytes             int64 // resident in the caches
	Objects                int   // caches
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Restores: s.n.restores.Load(), Rejected: s.n.rejected.Load(),
		Faults: s.n.faults.Load(), Copied: s.n.copied.Load(), CopyAround: s.n.around.Load(),
		ZeroFilled: s.n.zeroed.Load(), Removes: s.n.removes.Load(), Deferred: s.n.deferred.Load(), Refilled: s.n.refill.Load(),
		Prefetched: s.n.prefetched.Load(), PrefetchLate: s.n.late.Load(), PrefetchWasted: s.n.wasted.Load(),
		Prefetching: int(s.n.prefetching.Load()),
		Major:       s.counters.Major.Load(), Minor: s.counters.Minor.Load(), Sigbus: s.counters.Sigbus.Load(),
		StoreReads: s.counters.StoreReads.Load(), StoreBytes: s.counters.StoreBytes.Load(),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.VMs, st.Objects = len(s.vms), len(s.objects)
	for _, o := range s.objects {
		st.CacheBytes += o.file.Cache.Resident() * pagecache.PageSize
	}
	return st
}

// protoStats is what the metrics export as the daemon's counters.
func (s *Server) protoStats() proto.Stats {
	c := &s.counters
	st := proto.Stats{
		MajorFaults: c.Major.Load(), MinorFaults: c.Minor.Load(), SIGBUS: c.Sigbus.Load(),
		StoreReads: c.StoreReads.Load(), StoreBytes: c.StoreBytes.Load(), StoreErrors: c.StoreErrors.Load(),
		FillsInFlight: c.FillsInFlight.Load(), ProtocolErrors: s.n.rejected.Load(),
	}
	rs := s.budget.Stats()
	st.CacheBudget = rs.BudgetPages * pagecache.PageSize
	st.Evictions, st.EvictedBytes, st.Refaults = rs.Evictions, rs.EvictedPages*pagecache.PageSize, rs.Refaults
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Objects, st.Clients = len(s.objects), len(s.vms)
	for _, o := range s.objects {
		st.CacheBytes += o.file.Cache.Resident() * pagecache.PageSize
		st.MetadataBytes += o.file.Cache.MetadataBytes()
	}
	for v := range s.vms {
		st.Regions += len(v.regions)
	}
	return st
}
