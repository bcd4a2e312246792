package server

import (
	"cmp"
	"container/list"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/filemap/filemap/fault"
	"github.com/filemap/filemap/internal/delayed"
	"github.com/filemap/filemap/internal/fdstore"
	"github.com/filemap/filemap/metrics"
	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/readahead"
	"github.com/filemap/filemap/reclaim"
	"github.com/filemap/filemap/store"
	"golang.org/x/sys/unix"
)

// Config tunes a Server. The zero value is the kernel's defaults.
type Config struct {
	ReadaheadPages    int64         // read-around window; readahead.DefaultPages if 0
	ReadaheadMaxPages int64         // largest window of a sequential stream, in pages; readahead.DefaultMaxPages if 0
	Retries           int           // re-reads of a failing page before SIGBUS, for stores that do not retry themselves; fault.DefaultRetries if 0, none if negative
	RetryBackoff      time.Duration // delay before the first retry, doubled after each; fault.DefaultRetryBackoff if 0
	Log               *slog.Logger  // slog.Default() if nil

	// CacheBytes bounds the bytes resident in all caches together; 0 is
	// no limit. CachePolicy picks what to evict (reclaim.S3FIFO if empty).
	CacheBytes  int64
	CachePolicy reclaim.Policy

	// ReadBuffers bounds the daemon's read buffers, the bulk of its heap
	// (fault.Config.ReadBuffers); fault.DefaultReadBuffers(CacheBytes)
	// if 0.
	ReadBuffers int64

	// ReadaheadInflight bounds the bytes of readahead reads in flight to
	// local files, all together, so that a fault's own read finds the
	// disk's queue short (fault.Config.ReadaheadInflight):
	// fault.DefaultReadaheadInflight if 0, no bound if negative.
	ReadaheadInflight int64

	// MaxIdleCaches bounds the caches no client has open, kept for a later
	// Open of the same bytes: past it the least recently released go.
	// DefaultMaxIdleCaches if 0; none kept if negative.
	MaxIdleCaches int

	// WrapStore, if set, wraps every store the server opens: tests inject
	// faults with it.
	WrapStore func(store.Store) store.Store

	// THPSysfs is where transparent huge page settings are read;
	// pagecache.THPSysfs if empty.
	THPSysfs string

	// NoHuge keeps every cache in a memfd of 4 KiB pages. By default a
	// daemon that may mount (CAP_SYS_ADMIN) keeps its caches on a private
	// tmpfs whose fully read 2 MiB extents become huge folios, which a
	// warm mapping maps with one fault each instead of 32; one that may
	// not falls back to memfds and logs why.
	NoHuge bool

	// Remote tunes http(s):// and s3:// objects.
	Remote RemoteConfig

	// FaultTimeout bounds a fault from its message to its page or its
	// SIGBUS: every read, request and retry made for it stops at its
	// deadline (fault.Config.Timeout). DefaultFaultTimeout if 0; none if
	// negative.
	FaultTimeout time.Duration

	// GuardAllStores abandons a read still running at its fault's
	// deadline whatever its store (storetimeout.go), not only reads of
	// files on network and FUSE file systems, which may hang where others
	// do not. It costs every read a goroutine hand-off and a copy; tests
	// of stores that hang set it.
	GuardAllStores bool

	// Per-client limits (limits.go), for a client process as SO_PEERCRED
	// names it: its open objects, the bytes of those objects, its attached
	// regions, and its faults being worked on at once (the rest wait). 0
	// is the default (DefaultMaxObjectsPerClient...); negative is none.
	MaxObjectsPerClient        int
	MaxMappedBytesPerClient    int64
	MaxRegionsPerClient        int
	MaxFaultsInFlightPerClient int
}

// Server is the daemon's state. It is safe for concurrent use.
type Server struct {
	cfg      Config
	log      *slog.Logger
	backing  *pagecache.Backing // where caches live: memfds or the private tmpfs
	budget   *reclaim.Budget
	metrics  *metrics.Metrics
	faults   *fault.Handler
	remotes  *Remotes
	counters fault.Counters
	clients  clientTable // per-client accounts and limits
	hangs    *hangGuard  // store reads past their fault's deadline
	readers  *readerPool // read every attached uffd
	badConns atomic.Uint64
	nextID   atomic.Uint64
	conns    sync.WaitGroup // sessions being served

	mu         sync.Mutex // protects the fields below, and each object's that say so
	objects    map[objectKey]*cachedObject
	idleCaches idleCaches // objects no client has open (idle.go)
	sessions   map[*session]struct{}
	orphans    map[int32]*session    // regions taken over from a previous daemon, by client pid (keep.go)
	forks      map[*session]struct{} // fork(2) children's regions, a session each (fork.go)
	keeper     *fdstore.Store        // where regions outlive the daemon; nil unless Keep was called
	listeners  []net.Listener
	closed     bool
	closeDone  chan struct{}               // closed once Close has closed everything
	retired    bool                        // handed over to a successor (takeover.go)
	freed      delayed.List[*cachedObject] // dropped from objects, to be closed once mu is released (unlock)
}

// objectKey names a cache: an object's bytes for one trust domain (uid).
// adopted, if not 0, makes the key of a private cache, one a new Open never
// finds (object.private).
type objectKey struct {
	uid     uint32
	key     string
	version string
	adopted uint64
}

// cachedObject is an object's cache and store, shared by the sessions that opened it.
type cachedObject struct {
	key  objectKey
	file fault.File

	// Protected by Server.mu.
	uri       string // as the client opened it, credentials and all: to open it again, never to show
	refs      int
	localFile *os.File      // a local object's file, as a client opened it: kept across a restart (keep.go)
	idle      *list.Element // in Server.idleCaches while refs is 0
}

// private reports whether o is a cache adopted from a client (adopt) that
// serves only the clients that hold its file: the daemon did not read its
// pages from the store, and cannot tell whose bytes they are.
func (o *cachedObject) private() bool { return o.key.adopted != 0 }

// keepFileLocked remembers f, a local object's file, unless one is kept already.
// Called with s.mu held or before the object is shared.
func (o *cachedObject) keepFileLocked(f *os.File) {
	if o.localFile == nil {
		o.localFile = f
		return
	}
	f.Close()
}

// New makes a server. It refuses a kernel whose shmem huge page settings
// would make the cache serve zeros.
func New(cfg Config) (*Server, error) {
	if err := pagecache.CheckTHP(cfg.THPSysfs); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	budget, err := fault.NewBudget(cfg.CacheBytes, cfg.CachePolicy)
	if err != nil {
		return nil, err
	}
	if budgetPages := budget.Stats().BudgetPages; budgetPages > 0 {
		// A readahead window that is a large share of the budget evicts
		// what the reader is about to use: keep windows to an eighth.
		if cfg.ReadaheadMaxPages == 0 {
			cfg.ReadaheadMaxPages = readahead.DefaultMaxPages
		}
		cfg.ReadaheadMaxPages = max(min(cfg.ReadaheadMaxPages, budgetPages/8), 1)
		cfg.ReadaheadPages = min(max(cfg.ReadaheadPages, 0), cfg.ReadaheadMaxPages)
		if cfg.ReadaheadPages == 0 {
			cfg.ReadaheadPages = min(readahead.DefaultPages, cfg.ReadaheadMaxPages)
		}
	}
	backing := pagecache.NewBacking(!cfg.NoHuge)
	cfg.Log.Info("filemap: page cache backing", "huge", backing.Huge(), "backing", backing.Reason())
	s := &Server{
		cfg:        cfg,
		log:        cfg.Log,
		backing:    backing,
		budget:     budget,
		objects:    make(map[objectKey]*cachedObject),
		idleCaches: idleCaches{max: cmp.Or(cfg.MaxIdleCaches, DefaultMaxIdleCaches)},
		sessions:   make(map[*session]struct{}),
		orphans:    make(map[int32]*session),
		forks:      make(map[*session]struct{}),
		closeDone:  make(chan struct{}),
		clients:    clientTable{lim: newLimits(cfg)},
		hangs:      newHangGuard(cmp.Or(cfg.FaultTimeout, DefaultFaultTimeout), cfg.GuardAllStores, cfg.Log),
	}
	s.metrics = metrics.New(s.countersNow)
	if cfg.Remote.Fetch.Observer == nil {
		cfg.Remote.Fetch.Observer = s.metrics
	}
	if s.readers, err = newReaderPool(cfg.Log); err != nil {
		backing.Close()
		return nil, err
	}
	r, err := NewRemotes(cfg.Remote, cfg.Log)
	if err != nil {
		s.readers.closePool()
		backing.Close()
		return nil, err
	}
	s.remotes = r
	s.faults = fault.NewHandler(fault.Config{
		ReadaheadPages:    cfg.ReadaheadPages,
		ReadaheadMaxPages: cfg.ReadaheadMaxPages,
		Retries:           cfg.Retries,
		RetryBackoff:      cfg.RetryBackoff,
		Timeout:           cfg.FaultTimeout,
		Log:               cfg.Log,
		Budget:            s.budget,
		Observer:          s.metrics,
		ReadBuffers:       cfg.ReadBuffers,

		ReadaheadInflight: cfg.ReadaheadInflight,
	}, &s.counters)
	return s, nil
}

// DefaultReadaheadInflight is the bound on readahead reads in flight to
// local files a daemon gets unless told otherwise.
const DefaultReadaheadInflight = fault.DefaultReadaheadInflight

// DefaultCacheBytes is the budget a daemon gets unless told otherwise: half
// of the machine's memory, leaving the rest to its clients and the kernel.
func DefaultCacheBytes() int64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 1 << 30
	}
	return int64(si.Totalram) * int64(si.Unit) / 2 &^ (pagecache.PageSize - 1)
}

// Listen makes the daemon's socket at path, readable and writable only as
// mode allows (0600 keeps it to the daemon's own uid). A stale socket left
// by a dead daemon is replaced; a live one, or any other file, is an error
// (proto.Listen).
func Listen(path string, mode os.FileMode) (*proto.Listener, error) {
	return proto.Listen(path, mode)
}

// Serve accepts clients on l until l is closed or the server is.
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

// ServeConn serves one client connection until it closes or breaks the
// protocol.
func (s *Server) ServeConn(c *net.UnixConn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns.Add(1)
	defer s.conns.Done()
	ss, err := newSession(s, c)
	if err != nil {
		s.mu.Unlock()
		s.log.Warn("rejecting connection", "err", err)
		c.Close()
		return
	}
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
	ss.serve()
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
}

// Close stops accepting, ends every session and drops every cache. A
// second call returns once the first has done so: a daemon that exits
// after it must not cut short the first, whose last work (a fork child's
// pages poisoned, the keeper told) no process would finish.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.closeDone
		return nil
	}
	s.closed = true
	defer close(s.closeDone)
	for _, l := range s.listeners {
		l.Close()
	}
	for ss := range s.sessions {
		ss.conn.Close()
	}
	orphans, forks := s.orphans, s.forks
	s.orphans, s.forks = map[int32]*session{}, map[*session]struct{}{}
	s.mu.Unlock()
	s.conns.Wait()
	for _, ss := range orphans {
		ss.close()
	}
	for ss := range forks {
		ss.close() // kept for the next daemon, or poisoned
	}
	s.waitFills()
	s.readers.closePool()
	s.mu.Lock()
	for _, o := range s.objects {
		s.freeLocked(o)
	}
	s.unlock()
	s.remotes.Close()
	s.backing.Close()
	s.mu.Lock()
	k := s.keeper
	s.mu.Unlock()
	if k != nil {
		// Last: a successor waits for this, and finds the disk cache and
		// every cache file let go.
		k.Close(false) // the regions wait there for the next daemon
	}
	return nil
}

// freeLocked drops an object: no Open finds it any more, and it is off the
// idle list. Its cache and store are closed by unlock, once s.mu is
// released: closing them waits (for a collapse in progress, for a remote
// store's requests to end, for the disk cache's lock), and every Open,
// stat and release of the daemon would wait with them.
func (s *Server) freeLocked(o *cachedObject) {
	s.unidleLocked(o)
	delete(s.objects, o.key)
	s.freed.Add(o)
}

// unlock releases s.mu and closes the objects freed under it.
func (s *Server) unlock() {
	s.freed.Unlock(&s.mu, func(o *cachedObject) { o.close(s.budget) })
}

// close releases the cache and store of an object that has been freed.
func (o *cachedObject) close(budget *reclaim.Budget) {
	if o.localFile != nil {
		o.localFile.Close()
	}
	budget.Forget(o.file.Cache)
	o.file.Cache.Close()
	o.file.Store.Close()
}

// acquire returns the cache for st's object and version in uid's domain,
// making it if needed. It takes ownership of st. mayHang says st is a file
// on a network or FUSE file system.
func (s *Server) acquire(uid uint32, name string, st store.Store, mayHang bool) (*cachedObject, error) {
	st = s.wrapStore(st, mayHang)
	k := objectKey{uid: uid, key: st.Key(), version: st.Version()}
	s.mu.Lock()
	defer s.unlock() // and closes the stale caches it frees
	if o, ok := s.objects[k]; ok {
		// The cache has a store of these very bytes already; the bytes
		// this one's Open brought may be the ones its next reads want.
		store.PassPrimed(st, o.file.Store)
		st.Close()
		s.refLocked(o)
		return o, nil
	}
	cache, err := s.backing.New(name, st.Size())
	if err != nil {
		st.Close()
		return nil, err
	}
	s.dropStaleLocked(k, name)
	o := &cachedObject{key: k, file: fault.File{Cache: cache, Store: st}, refs: 1}
	s.objects[k] = o
	return o, nil
}

// wrapStore wraps a store the daemon has just opened.
func (s *Server) wrapStore(st store.Store, mayHang bool) store.Store {
	if s.cfg.WrapStore != nil {
		st = s.cfg.WrapStore(st)
	}
	return s.hangs.wrap(st, mayHang) // storetimeout.go: no read hangs a fault forever
}

// adopt makes the cache of st's object from file, the cache file a client
// of uid maps and hands back after its daemon died or handed over, or finds
// the cache that is that file already: a client's faults must be filled
// into the very file it maps, and two caches of one file would each fill
// the other's pages. It takes ownership of st and file. The pages the file
// holds are accounted in the budget.
//
// A file a client hands back (private) may hold any bytes: a client of the
// daemon's uid can make one, and any client can hand back the cache of
// another object it read, of the same size. So the cache stays private to
// the clients that hold the file, who see its bytes anyway: no Open finds
// it, and it goes when the last of them lets go. A cache kept by the keeper
// is the daemon's own, and is shared again unless it was private already,
// or its object has a cache already.
func (s *Server) adopt(uid uint32, name string, st store.Store, mayHang bool, file *os.File, private bool) (*cachedObject, error) {
	st = s.wrapStore(st, mayHang)
	k := objectKey{uid: uid, key: st.Key(), version: st.Version()}
	s.mu.Lock()
	o, err := s.cacheOfLocked(uid, name, file, st.Size())
	if o != nil || err != nil {
		s.mu.Unlock()
		file.Close()
		st.Close()
		return o, err
	}
	var runs [][2]int64
	cache, err := s.backing.Adopt(name, st.Size(), file, func(lo, hi int64) { runs = append(runs, [2]int64{lo, hi}) })
	if err != nil {
		s.mu.Unlock()
		st.Close()
		return nil, err
	}
	if _, taken := s.objects[k]; taken || private {
		k.adopted = s.nextID.Add(1)
	}
	o = &cachedObject{key: k, file: fault.File{Cache: cache, Store: st}, refs: 1}
	s.objects[k] = o
	s.mu.Unlock()
	var n int64
	for _, r := range runs {
		s.budget.Reserve(r[1] - r[0])
		s.budget.Commit(cache, r[0], r[1], r[1]-r[0], r[1]-r[0], false)
		n += r[1] - r[0]
	}
	s.log.Info("adopted a cache a client handed back", "object", name, "version", k.version,
		"private", o.private(), "resident_bytes", n*pagecache.PageSize)
	return o, nil
}

// cacheOfLocked finds the cache whose file is file, with a reference taken; one
// of another uid, or of another size than the client names, is an error.
// Called with s.mu held.
func (s *Server) cacheOfLocked(uid uint32, name string, file *os.File, size int64) (*cachedObject, error) {
	for k, o := range s.objects {
		if !o.file.Cache.Same(file) {
			continue
		}
		if k.uid != uid {
			return nil, fmt.Errorf("%s: the cache file handed back is a cache of uid %d's, not of uid %d's", name, k.uid, uid)
		}
		// The client is accounted the size it names, and released the
		// cache's when it closes: they must agree.
		if have := o.file.Cache.Size(); have != size {
			return nil, fmt.Errorf("open %s: the cache file handed back is the cache of %d bytes, not of %d", name, have, size)
		}
		s.refLocked(o)
		return o, nil
	}
	return nil, nil
}

// dropStaleLocked frees the caches that nobody maps any more of other versions
// of k's object, or of another object under the same name (a file replaced
// by rename): their bytes will not be asked for again. Called with s.mu
// held, before k's own cache is added.
func (s *Server) dropStaleLocked(k objectKey, name string) {
	for ok, o := range s.objects {
		if ok.uid == k.uid && (ok.key == k.key || o.file.Cache.Name() == name) && o.refs == 0 {
			s.freeLocked(o)
		}
	}
}

// release drops a reference. The cache stays when the last goes: a later
// Open of the same bytes finds it warm. It goes when its object changes
// (dropStaleLocked), or when MaxIdleCaches caches released since want its
// place (idle.go).
func (s *Server) release(o *cachedObject) {
	s.mu.Lock()
	defer s.unlock() // and closes what went past the idle bound
	o.refs--
	if o.refs == 0 && !s.closed {
		s.idleLocked(o)
	}
}

// DropCaches punches every page out of the caches of uid's objects, every
// uid's for root, as writing 3 to /proc/sys/vm/drop_caches does for the
// kernel's: each client's next access to a page faults again and reads the
// store. Pages being read are kept. Another uid's caches are not the
// caller's to empty: that would slow down every client of that uid. It
// says what it dropped.
func (s *Server) DropCaches(uid uint32) (proto.Dropped, error) {
	s.mu.Lock()
	objs := make([]*cachedObject, 0, len(s.objects))
	for k, o := range s.objects {
		if uid == 0 || k.uid == uid {
			objs = append(objs, o)
		}
	}
	s.mu.Unlock()
	var d proto.Dropped
	var errs []error
	for _, o := range objs {
		s.budget.Forget(o.file.Cache)
		n, err := o.file.Cache.Punch(0, o.file.Cache.NPages())
		if err != nil {
			errs = append(errs, err)
		}
		if n > 0 {
			d.Bytes += n * pagecache.PageSize
			d.Objects++
		}
	}
	return d, errors.Join(errs...)
}

// Objects lists the caches of uid's objects, every uid's for root, the
// largest first.
func (s *Server) Objects(uid uint32) []proto.ObjectStat {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []proto.ObjectStat
	for k, o := range s.objects {
		if uid != 0 && k.uid != uid {
			continue
		}
		c := o.file.Cache
		out = append(out, proto.ObjectStat{URI: c.Name(), Version: k.version, Size: c.Size(),
			CacheBytes: c.Resident() * pagecache.PageSize, Users: o.refs, Uid: k.uid})
	}
	slices.SortFunc(out, func(a, b proto.ObjectStat) int {
		return cmp.Or(cmp.Compare(b.CacheBytes, a.CacheBytes), cmp.Compare(a.URI, b.URI), cmp.Compare(a.Uid, b.Uid))
	})
	return out
}

// AllocatedBytes is the memory all caches hold, as the kernel counts it.
func (s *Server) AllocatedBytes() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, o := range s.objects {
		b, err := o.file.Cache.AllocatedBytes()
		if err != nil {
			return 0, err
		}
		n += b
	}
	return n, nil
}

// Backing is where the daemon's caches live, and its collapser's counters.
func (s *Server) Backing() *pagecache.Backing { return s.backing }

// BudgetMaxResident is the most bytes the budget has ever accounted.
func (s *Server) BudgetMaxResident() int64 {
	return s.budget.Stats().MaxResident * pagecache.PageSize
}

// Metrics are the daemon's metrics, for `serve --metrics`.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

// Stats returns the daemon's counters and fault latencies.
func (s *Server) Stats() proto.Stats {
	st := s.countersNow()
	st.FaultLatency = s.metrics.Latencies()
	s.metrics.RemoteTotals(&st)
	return st
}

// countersNow returns the daemon's counters; the metrics read them.
func (s *Server) countersNow() proto.Stats {
	c := &s.counters
	st := proto.Stats{
		MajorFaults:    c.Major.Load(),
		MinorFaults:    c.Minor.Load(),
		SIGBUS:         c.Sigbus.Load(),
		StoreReads:     c.StoreReads.Load(),
		StoreBytes:     c.StoreBytes.Load(),
		StoreErrors:    c.StoreErrors.Load(),
		FillsInFlight:  c.FillsInFlight.Load(),
		ProtocolErrors: s.badConns.Load(),
	}
	fm := s.faults.FillMemory()
	st.FillBufferBytes, st.FillBufferLimit, st.FillBufferWaits = fm.Lent+fm.Idle, fm.Limit, fm.Waits
	dq := s.faults.DiskQueue()
	st.DiskReadBytes, st.DiskReadaheadLimit, st.DiskReadaheadQueueWaits = dq.Inflight, dq.Limit, dq.Waits
	st.DiskCache, st.DiskCacheOff = s.remotes.DiskStats()
	cs := s.backing.CollapseStats()
	st.HugeExtents, st.CollapsesPending, st.CollapsesFailed = cs.Collapsed, cs.Pending, cs.Failed
	rs := s.budget.Stats()
	st.CacheBudget = rs.BudgetPages * pagecache.PageSize
	st.Evictions, st.EvictedBytes, st.Refaults = rs.Evictions, rs.EvictedPages*pagecache.PageSize, rs.Refaults
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Objects = len(s.objects)
	st.IdleObjects = s.idleCaches.lru.Len()
	st.Clients = len(s.sessions)
	for _, o := range s.objects {
		st.CacheBytes += o.file.Cache.Resident() * pagecache.PageSize
		st.MetadataBytes += o.file.Cache.MetadataBytes()
	}
	for ss := range s.sessions {
		st.Regions += ss.regionCount()
	}
	for _, ss := range s.orphans {
		st.Regions += ss.regionCount()
	}
	for ss := range s.forks {
		st.Regions += ss.regionCount()
	}
	return st
}

// errBadFrame marks an error that ends the connection: after it the peer
// and the daemon no longer agree on what was said.
type errBadFrame struct{ error }

func badFrame(format string, args ...any) error {
	return errBadFrame{fmt.Errorf(format, args...)}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, unix.ECONNRESET)
}
