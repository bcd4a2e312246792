package server

// Per-client limits: what one client process may hold of the daemon's
// resources, as the kernel bounds a process with RLIMIT_NOFILE, RLIMIT_AS
// and vm.max_map_count. A client is a process as SO_PEERCRED named it at
// connect (pid and uid): the library makes one connection per mapping, so a
// limit per connection would bound nothing.
//
// The limits are there so that a buggy client (one that leaks mappings, or
// opens a file that claims to be exabytes long) meets a clear error instead
// of taking the daemon down for every other client. They do not stop a
// hostile user, who can start as many processes as it likes: see
// THREAT_MODEL.md.

import (
	"errors"
	"fmt"
	"sync"

	"github.com/filemap/filemap/fault"
	"golang.org/x/sys/unix"
)

// The defaults of the per-client limits (Config's zero values).
const (
	// DefaultMaxObjectsPerClient bounds a client's open objects. Each one
	// holds a cache alive and, in the daemon, a connection and a
	// descriptor or two; a client leaking mappings meets this error long
	// before the daemon meets RLIMIT_NOFILE, and no program filemap is for
	// maps more objects than this at once.
	DefaultMaxObjectsPerClient = 4096

	// DefaultMaxRegionsPerClient bounds a client's attached regions, each
	// a userfaultfd descriptor and a goroutine in the daemon. The library
	// attaches one region per mapping, so it matches the objects' limit.
	DefaultMaxRegionsPerClient = 4096

	// DefaultMaxMappedBytesPerClient bounds the bytes of the objects a
	// client has open. The daemon's own cost of an object grows with its
	// size (its page-state table's directory: 8 bytes per 128 MiB), and an
	// object several exabytes long, which a sparse tmpfs file or a lying
	// HTTP server can claim to be, would exhaust its memory. 64 TiB is
	// half of the user address space of x86-64 with 4-level paging: a
	// process cannot map more at once anyway.
	DefaultMaxMappedBytesPerClient = 64 << 40

	// DefaultMaxFaultsInFlightPerClient bounds the faults of one client
	// that the daemon works on at once; the client's other faults wait, in
	// the kernel, for one of them to end. Each costs a goroutine and, for a
	// miss, a read buffer of up to a window, so 128 bounds one client's
	// share of the daemon to about that many MiB, and is more concurrency
	// than a disk or a fleet of vCPUs makes use of.
	DefaultMaxFaultsInFlightPerClient = 128

	// maxUserAddress is above any user address on Linux (56 bits with
	// 5-level paging, 52 on arm64): no region can end above it, and no
	// object larger can be mapped. It keeps address arithmetic far from
	// overflowing whatever a client claims.
	maxUserAddress = 1 << 57
)

// limits are Config's per-client limits with their defaults applied; 0 is
// no limit.
type limits struct {
	objects, regions, faults int
	mapped                   int64
}

// limitOf is a Config value with its default applied: 0 is the default,
// negative is no limit.
func limitOf[T int | int64](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

func newLimits(cfg Config) limits {
	return limits{
		objects: limitOf(cfg.MaxObjectsPerClient, DefaultMaxObjectsPerClient),
		regions: limitOf(cfg.MaxRegionsPerClient, DefaultMaxRegionsPerClient),
		mapped:  limitOf(cfg.MaxMappedBytesPerClient, DefaultMaxMappedBytesPerClient),
		faults:  limitOf(cfg.MaxFaultsInFlightPerClient, DefaultMaxFaultsInFlightPerClient),
	}
}

// ClientUsage is what one client holds of the daemon, for `filemap stat`,
// operators and tests.
type ClientUsage struct {
	PID         int32
	UID         uint32
	Connections int
	Objects     int   // open objects (handles)
	MappedBytes int64 // bytes of the open objects
	Regions     int   // attached regions, fork children's included

	FaultsInFlight     int    // faults being worked on now
	PeakFaultsInFlight int    // the most at once, ever
	FaultsQueued       uint64 // faults that waited for one of the others to end
}

// Clients lists what each connected client holds.
func (s *Server) Clients() []ClientUsage {
	s.clients.mu.Lock()
	cs := make([]*client, 0, len(s.clients.m))
	for _, c := range s.clients.m {
		cs = append(cs, c)
	}
	s.clients.mu.Unlock()
	out := make([]ClientUsage, 0, len(cs))
	for _, c := range cs {
		c.mu.Lock()
		out = append(out, ClientUsage{
			PID: c.key.pid, UID: c.key.uid, Connections: c.sessions,
			Objects: c.objects, MappedBytes: c.mapped, Regions: c.regions,
			FaultsInFlight: len(c.inflight), PeakFaultsInFlight: c.peak, FaultsQueued: c.queued,
		})
		c.mu.Unlock()
	}
	return out
}

type clientKey struct {
	uid uint32
	pid int32
}

// clientTable is the daemon's clients, each shared by its sessions.
type clientTable struct {
	lim limits
	mu  sync.Mutex
	m   map[clientKey]*client // protected by mu
}

// client is one client process's account.
type client struct {
	key  clientKey
	lim  limits
	desc string // "client pid N (uid U)", for errors

	// slots has a token for each fault in flight; nil when unlimited.
	slots chan struct{}

	mu       sync.Mutex // protects the fields below
	sessions int
	objects  int
	mapped   int64
	regions  int
	inflight map[faultKey]*flight
	peak     int
	queued   uint64
}

// faultKey is a page of a client's memory, as one of its uffds names it.
type faultKey struct {
	a    *attachment
	addr uintptr
}

// flight is a fault being resolved. rerun says a duplicate message for its
// page arrived meanwhile.
type flight struct{ rerun bool }

// join counts a new session of the client cred names.
func (t *clientTable) join(cred *unix.Ucred) *client {
	k := clientKey{uid: cred.Uid, pid: cred.Pid}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[clientKey]*client)
	}
	c := t.m[k]
	if c == nil {
		c = &client{key: k, lim: t.lim, desc: fmt.Sprintf("client pid %d (uid %d)", k.pid, k.uid),
			inflight: make(map[faultKey]*flight)}
		if t.lim.faults > 0 {
			c.slots = make(chan struct{}, t.lim.faults)
		}
		t.m[k] = c
	}
	c.mu.Lock()
	c.sessions++
	c.mu.Unlock()
	return c
}

// leave ends a session; the client's account goes with its last one.
func (t *clientTable) leave(c *client) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c.mu.Lock()
	c.sessions--
	last := c.sessions == 0
	c.mu.Unlock()
	if last && t.m[c.key] == c {
		delete(t.m, c.key)
	}
}

// reserveObject counts an object of size bytes that the client opens, or
// says which limit it would break.
func (c *client) reserveObject(name string, size int64) error {
	if size < 0 || size >= maxUserAddress {
		return fmt.Errorf("open %s: %d bytes is larger than any process can map", name, size)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lim.objects > 0 && c.objects >= c.lim.objects {
		return fmt.Errorf("open %s: %s has %d objects open, the daemon's limit per client (filemap serve --max-objects-per-client): %w",
			name, c.desc, c.objects, ErrLimit)
	}
	if c.lim.mapped > 0 && c.mapped+size > c.lim.mapped {
		return fmt.Errorf("open %s: %s has %d bytes open; %d more is over the daemon's limit of %d per client (filemap serve --max-mapped-per-client): %w",
			name, c.desc, c.mapped, size, c.lim.mapped, ErrLimit)
	}
	c.objects++
	c.mapped += size
	return nil
}

// releaseObject undoes reserveObject.
func (c *client) releaseObject(size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.objects--
	c.mapped -= size
}

// reserveRegion counts a region the client attaches, or says why it may
// not: a region no process can have, or one too many.
func (c *client) reserveRegion(name string, addr, length uint64) error {
	if length >= maxUserAddress || addr >= maxUserAddress-length {
		return fmt.Errorf("attach %s: region addr %#x len %d is not in any process's address space", name, addr, length)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lim.regions > 0 && c.regions >= c.lim.regions {
		return fmt.Errorf("attach %s: %s has %d regions attached, the daemon's limit per client (filemap serve --max-regions-per-client): %w",
			name, c.desc, c.regions, ErrLimit)
	}
	c.regions++
	return nil
}

// addRegion counts a region the daemon could not refuse: a fork child's.
func (c *client) addRegion() {
	c.mu.Lock()
	c.regions++
	c.mu.Unlock()
}

func (c *client) releaseRegion() {
	c.mu.Lock()
	c.regions--
	c.mu.Unlock()
}

// ErrLimit is wrapped by the errors of requests refused for a per-client
// limit.
var ErrLimit = errors.New("per-client limit reached")

// fault serves a fault message for addr, which r maps. A fault that must
// wait for I/O takes one of the client's slots first: a client at its
// limit stops being read, its faults wait in the kernel's queue of its
// uffd, and each resumes when a slot frees. Waiting rather than failing:
// a fault cannot be refused without SIGBUS, which would kill a correct
// program for being busy; the kernel does not fail faults under load
// either; and the faulting thread is blocked already, so the wait costs
// it latency and nothing else. The kernel's queue holds one entry per
// blocked thread, so it is bounded by the client itself.
//
// A second message for a page whose fault is being resolved is a
// duplicate: the faulting thread was interrupted by a signal (Go's
// preemption signal does so every 10 ms) and ran the access again. It
// takes no slot and no goroutine. The page is woken once more when the
// first resolution ends, which is all a duplicate's own resolution would
// have done: the woken access runs again against the page as it is then.
// A thread blocked for a slow read would otherwise have the daemon start
// a goroutine a hundred times a second, and fill its client's slots.
//
// While a client waits for a slot its uffds are not read, so its
// non-cooperative events (fork, mremap, munmap, MADV_DONTNEED, which only
// clients that ask for them get) wait too, and its own processes that raise
// them wait with them; UFFDIO_POISON refuses to work while one is unread,
// and the fault path gives up poisoning after 100 ms of that: a faulting
// thread of such a client, at its limit, on a page that cannot be read, may
// then stay blocked until a signal makes it fault again.
func (a *attachment) fault(r *fault.Region, addr uintptr) {
	c := a.ss.client
	k := faultKey{a, addr}
	c.mu.Lock()
	if f := c.inflight[k]; f != nil {
		f.rerun = true
		c.mu.Unlock()
		a.ss.s.counters.Minor.Add(1) // served by another fault's read
		return
	}
	c.mu.Unlock()
	a.ss.s.faults.Fault(r, addr, func(resolve func()) {
		inline := a.ss.s.readers.busy() // reader.go: the reader serves the fault itself
		if !c.acquire(a.stop) {
			return // the region is being detached: its faulters stall, as on any detach
		}
		c.mu.Lock()
		c.inflight[k] = &flight{}
		c.peak = max(c.peak, len(c.inflight))
		c.mu.Unlock()
		work := func() {
			defer c.finish(k)
			resolve()
		}
		if !inline {
			a.ops.Go(work)
			return
		}
		a.ops.Add(1)
		defer a.ops.Done()
		work()
	})
}

// acquire takes a slot for a fault, waiting while the client is at its
// limit; false if stop closed first.
func (c *client) acquire(stop <-chan struct{}) bool {
	if c.slots == nil {
		return true
	}
	select {
	case c.slots <- struct{}{}:
		return true
	default:
	}
	c.mu.Lock()
	c.queued++
	c.mu.Unlock()
	select {
	case c.slots <- struct{}{}:
		return true
	case <-stop:
		return false
	}
}

// finish ends a fault's resolution: its slot frees, and its page is woken
// again if a duplicate arrived meanwhile. It runs in the attachment's ops,
// so the uffd is still open.
func (c *client) finish(k faultKey) {
	c.mu.Lock()
	f := c.inflight[k]
	delete(c.inflight, k)
	c.mu.Unlock()
	if c.slots != nil {
		<-c.slots
	}
	if f != nil && f.rerun {
		if err := k.a.u.Wake(k.addr, ps); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			k.a.ss.log.Warn("UFFDIO_WAKE of a duplicate fault failed", "addr", fmt.Sprintf("%#x", k.addr), "err", err)
		}
	}
}
