package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/readahead"
	"github.com/filemap/filemap/store"
	"golang.org/x/sys/unix"
)

// session is one client connection: the handles it opened and the regions
// it attached.
type session struct {
	s    *Server
	conn *proto.Conn
	cred *unix.Ucred
	log  *slog.Logger
	// client is the account of the process at the other end, shared by
	// all its sessions; its limits are in limits.go.
	client *client

	retire bool // close the server once the reply in hand is sent (takeover.go)

	mu          sync.Mutex // protects the fields below
	closed      bool
	handles     map[uint64]*cachedObject
	attachments map[uint64]*attachment
}

func newSession(s *Server, c *net.UnixConn) (*session, error) {
	cred, err := proto.PeerCred(c)
	if err != nil {
		return nil, err
	}
	return &session{
		s:           s,
		conn:        proto.NewConn(c),
		cred:        cred,
		log:         s.log.With("pid", cred.Pid, "uid", cred.Uid),
		client:      s.clients.join(cred),
		handles:     make(map[uint64]*cachedObject),
		attachments: make(map[uint64]*attachment),
	}, nil
}

func (ss *session) serve() {
	defer ss.close()
	for {
		f, err := ss.conn.ReadFrame()
		if err != nil {
			if !isEOF(err) {
				ss.s.badConns.Add(1)
				ss.log.Warn("closing connection: bad frame", "err", err)
			}
			return
		}
		reply, fds, err := ss.handle(f)
		if bad := (errBadFrame{}); errors.As(err, &bad) {
			ss.s.badConns.Add(1)
			ss.log.Warn("closing connection: bad request", "type", f.Type, "err", err)
			closeAll(fds)
			return
		}
		out := proto.Frame{Type: proto.TReply, ID: f.ID, Payload: proto.Marshal(reply), Fds: fds}
		if err != nil {
			ss.log.Info("request failed", "type", f.Type, "err", err)
			out = proto.Frame{Type: proto.TError, ID: f.ID, Payload: proto.Marshal(proto.Error{Op: f.Type.String(), Message: err.Error()})}
		}
		werr := ss.conn.WriteFrame(out)
		closeAll(fds)
		if ss.retire && werr == nil {
			go ss.s.Close()
		}
		if werr != nil {
			if !isEOF(werr) {
				ss.log.Warn("closing connection: cannot reply", "err", werr)
			}
			return
		}
	}
}

// handle runs one request. An errBadFrame ends the session; another error
// is sent back to the client.
func (ss *session) handle(f proto.Frame) (any, []*os.File, error) {
	want := map[proto.Type]int{proto.TOpen: -1, proto.TAttach: 1}[f.Type]
	if got := len(f.Fds); want >= 0 && got != want {
		f.CloseFds()
		return nil, nil, badFrame("%v takes %d file descriptors, got %d", f.Type, want, got)
	}
	switch f.Type {
	case proto.THello:
		var req proto.Hello
		if err := proto.Unmarshal(f.Payload, &req); err != nil {
			return nil, nil, errBadFrame{err}
		}
		return proto.HelloReply{Daemon: "filemap", PageSize: pagecache.PageSize}, nil, nil
	case proto.TOpen:
		return ss.open(f)
	case proto.TAttach:
		return ss.attach(f)
	case proto.TAdvise:
		var req proto.Advise
		if err := proto.Unmarshal(f.Payload, &req); err != nil {
			return nil, nil, errBadFrame{err}
		}
		return proto.Empty{}, nil, ss.advise(req)
	case proto.TDetach:
		var req proto.Detach
		if err := proto.Unmarshal(f.Payload, &req); err != nil {
			return nil, nil, errBadFrame{err}
		}
		return proto.Empty{}, nil, ss.detach(req.Region)
	case proto.TClose:
		var req proto.Close
		if err := proto.Unmarshal(f.Payload, &req); err != nil {
			return nil, nil, errBadFrame{err}
		}
		return proto.Empty{}, nil, ss.closeHandle(req.Handle)
	case proto.TStat:
		st := ss.s.Stats()
		st.Clients-- // the asker's own session: the question is about the others
		return st, nil, nil
	case proto.TDrop:
		d, err := ss.s.DropCaches(ss.cred.Uid)
		return d, nil, err
	case proto.TObjects:
		return proto.Objects{Objects: ss.s.Objects(ss.cred.Uid)}, nil, nil
	case proto.TResume:
		var req proto.Resume
		if err := proto.Unmarshal(f.Payload, &req); err != nil {
			return nil, nil, errBadFrame{err}
		}
		reply, err := ss.resume(req)
		return reply, nil, err
	case proto.TTakeover:
		f, err := ss.takeover()
		if err != nil {
			return nil, nil, err
		}
		return proto.Empty{}, []*os.File{f}, nil
	default:
		f.CloseFds()
		return nil, nil, badFrame("unknown request type %v", f.Type)
	}
}

// open finds or makes the cache of an object. A local file arrives as the
// fd the client opened itself, so the kernel has checked the client's right
// to read it; the daemon never opens a client's path with its own rights.
// A client re-opening after a restart hands back the cache file it maps,
// last, and the daemon adopts it (proto.Open.Cache) as a cache of its own
// that no other Open finds: the daemon did not read its bytes.
func (ss *session) open(f proto.Frame) (any, []*os.File, error) {
	var req proto.Open
	if err := proto.Unmarshal(f.Payload, &req); err != nil {
		f.CloseFds()
		return nil, nil, errBadFrame{err}
	}
	var cache *os.File
	if req.Cache {
		if len(f.Fds) == 0 {
			return nil, nil, badFrame("open %s with the cache file it maps: no descriptors", store.Redact(req.URI))
		}
		cache, f.Fds = f.Fds[len(f.Fds)-1], f.Fds[:len(f.Fds)-1]
		defer func() {
			if cache != nil {
				cache.Close()
			}
		}()
	}
	uri, err := store.ParseURI(req.URI)
	if err == nil {
		err = checkLocalName(uri)
	}
	if err != nil {
		f.CloseFds()
		return nil, nil, err
	}
	// A frame with descriptors goes the long way, which refuses it.
	if o := ss.s.refImmutable(ss.cred.Uid, uri, req, len(f.Fds)); o != nil {
		size := o.file.Cache.Size()
		if err := ss.client.reserveObject(uri.Name(), size); err != nil {
			ss.s.release(o)
			return nil, nil, err
		}
		return ss.opened(o, size)
	}
	// Before the store takes the descriptor: where the file lives decides
	// whether its reads get a timeout (storetimeout.go).
	hangs := len(f.Fds) == 1 && mayHang(f.Fds[0])
	var kept *os.File // the file, kept for the keeper (keep.go)
	if len(f.Fds) == 1 {
		kept = dupFile(f.Fds[0])
	}
	st, name, err := ss.openStore(uri, req, f)
	if err != nil {
		closeFile(kept)
		return nil, nil, err
	}
	if cache != nil {
		// The client maps the old bytes: the cache keeps them, and a page
		// it lacks gets SIGBUS, never the new version's bytes.
		st = ss.s.pin(st, name, req.Version, req.Size)
	} else if req.Version != "" && req.Version != st.Version() {
		st.Close()
		closeFile(kept)
		return nil, nil, fmt.Errorf("%s: %w: pinned version %s, now %s", name, store.ErrChanged, req.Version, st.Version())
	}
	size := st.Size()
	if err := ss.client.reserveObject(name, size); err != nil {
		st.Close()
		closeFile(kept)
		return nil, nil, err
	}
	var o *cachedObject
	if cache != nil {
		o, err = ss.s.adopt(ss.cred.Uid, name, st, hangs, cache, true)
		cache = nil
	} else {
		o, err = ss.s.acquire(ss.cred.Uid, name, st, hangs)
	}
	if err != nil {
		ss.client.releaseObject(size)
		closeFile(kept)
		return nil, nil, err
	}
	ss.s.mu.Lock()
	if o.uri == "" {
		o.uri = req.URI
	}
	if kept != nil {
		o.keepFileLocked(kept)
	}
	ss.s.mu.Unlock()
	return ss.opened(o, size)
}

// checkLocalName refuses a local file named by a relative path. The
// daemon's working directory is not the client's, and the client's cannot
// be read reliably: /proc/PID/cwd may have changed since the client opened
// the file, names a directory of the client's mount namespace, and is not
// readable by a daemon of another uid. A cache named from the wrong
// directory would show a wrong name in `filemap stat --objects` and the
// logs, and could take the place of the idle cache of the file that has
// that name (dropStaleLocked). The library sends absolute paths.
func checkLocalName(uri store.URI) error {
	if uri.Scheme == "file" && !strings.Contains(uri.Raw, "://") && !filepath.IsAbs(uri.Raw) {
		return fmt.Errorf("open %q: a local file must be named by its absolute path: the daemon cannot tell which directory a relative one starts from", uri.Raw)
	}
	return nil
}

// opened gives the client a handle of o, which it has a reference to and
// size bytes reserved for, and the cache file to map.
func (ss *session) opened(o *cachedObject, size int64) (any, []*os.File, error) {
	ro, err := o.file.Cache.ReadOnlyFile()
	if err != nil {
		ss.s.release(o)
		ss.client.releaseObject(size)
		return nil, nil, err
	}
	h := ss.s.nextID.Add(1)
	ss.mu.Lock()
	ss.handles[h] = o
	ss.mu.Unlock()
	return proto.OpenReply{Handle: h, Size: o.file.Cache.Size(), Version: o.key.version}, []*os.File{ro}, nil
}

// openStore opens the store of uri: a local file through the one fd the
// client sent, a remote object with the daemon's own clients (and no fd).
// It returns the name the cache goes by in logs, errors, listings and
// metrics: a remote object's has its credentials redacted (store.URI.Name).
func (ss *session) openStore(uri store.URI, req proto.Open, f proto.Frame) (store.Store, string, error) {
	if uri.Scheme != "file" {
		if len(f.Fds) != 0 {
			f.CloseFds()
			return nil, "", badFrame("open of remote object %s takes no descriptors, got %d", uri.Name(), len(f.Fds))
		}
		open := ss.s.remotes.Open
		if req.Cache {
			open = ss.s.remotes.Reopen
		}
		st, err := open(context.Background(), uri, req.Version)
		return st, uri.Name(), err
	}
	if got := len(f.Fds); got != 1 {
		f.CloseFds()
		return nil, "", badFrame("open of local file %s takes the fd the client opened, got %d descriptors", uri.Path, got)
	}
	if err := checkReadable(f.Fds[0], uri.Path); err != nil {
		f.Fds[0].Close()
		return nil, "", err
	}
	st, err := store.NewFile(f.Fds[0], uri.Path)
	if err != nil {
		f.Fds[0].Close()
		return nil, "", err
	}
	return st, uri.Path, nil
}

func (ss *session) attach(f proto.Frame) (any, []*os.File, error) {
	var req proto.Attach
	if err := proto.Unmarshal(f.Payload, &req); err != nil {
		f.CloseFds()
		return nil, nil, errBadFrame{err}
	}
	ss.mu.Lock()
	o := ss.handles[req.Handle]
	ss.mu.Unlock()
	if o == nil {
		f.CloseFds()
		return nil, nil, fmt.Errorf("attach: no open handle %d", req.Handle)
	}
	advice := readahead.Normal
	if req.Advice != "" {
		a, err := readahead.ParseAdvice(req.Advice)
		if err != nil {
			f.CloseFds()
			return nil, nil, err
		}
		advice = a
	}
	const ps = pagecache.PageSize
	if req.Addr%ps != 0 || req.Len%ps != 0 || req.Offset%ps != 0 || req.Len == 0 || req.Offset < 0 {
		f.CloseFds()
		return nil, nil, fmt.Errorf("attach %s: region addr %#x len %d offset %d is not page-aligned and non-empty",
			o.file.Cache.Name(), req.Addr, req.Len, req.Offset)
	}
	if err := ss.client.reserveRegion(o.file.Cache.Name(), req.Addr, req.Len); err != nil {
		f.CloseFds()
		return nil, nil, err
	}
	a, err := newAttachment(ss, f.Fds[0], req.Features)
	if err != nil {
		ss.client.releaseRegion()
		return nil, nil, fmt.Errorf("attach %s: %w", o.file.Cache.Name(), err)
	}
	a.add(&o.file, uintptr(req.Addr), req.Offset/ps, int64(req.Len/ps), advice)
	a.obj = o
	a.hold(o)
	ss.mu.Lock()
	ss.attachments[a.id] = a
	ss.mu.Unlock()
	a.serve()
	a.keep()
	// A client re-attaching after its daemon died may have threads
	// waiting on faults that daemon read and never answered: the kernel
	// will not send them again. Woken, they fault again, and we get them.
	if err := a.u.Wake(uintptr(req.Addr), uintptr(req.Len)); err != nil {
		ss.log.Warn("UFFDIO_WAKE of a newly attached region failed", "object", o.file.Cache.Name(), "err", err)
	}
	return proto.AttachReply{Region: a.id}, nil, nil
}

func (ss *session) advise(req proto.Advise) error {
	a := ss.attachment(req.Region)
	if a == nil {
		return fmt.Errorf("advise: no region %d", req.Region)
	}
	advice, err := readahead.ParseAdvice(req.Advice)
	if err != nil {
		return err
	}
	switch advice {
	case readahead.Normal, readahead.Random, readahead.Sequential:
		a.setAdvice(advice)
	case readahead.WillNeed:
		a.willNeed(req.Offset, req.Length)
	case readahead.DontNeed:
		// The client has dropped its own page table entries; the shared
		// cache keeps the pages for everyone else.
	}
	return nil
}

func (ss *session) attachment(id uint64) *attachment {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.attachments[id]
}

func (ss *session) detach(id uint64) error {
	ss.mu.Lock()
	a := ss.attachments[id]
	delete(ss.attachments, id)
	ss.mu.Unlock()
	if a == nil {
		return fmt.Errorf("detach: no region %d", id)
	}
	a.close()
	return nil
}

func (ss *session) closeHandle(h uint64) error {
	ss.mu.Lock()
	o := ss.handles[h]
	delete(ss.handles, h)
	ss.mu.Unlock()
	if o == nil {
		return fmt.Errorf("close: no open handle %d", h)
	}
	ss.s.release(o)
	ss.client.releaseObject(o.file.Cache.Size())
	return nil
}

func (ss *session) regionCount() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	n := 0
	for _, a := range ss.attachments {
		n += a.regionCount()
	}
	return n
}

// close tears the session down: every region stops being served (its
// faulters, if any are left, stall on the client's own uffd copy; a fork
// child's get SIGBUS, see attachment.close) and every handle is released.
func (ss *session) close() {
	if ss.conn != nil { // an orphan has none (keep.go)
		ss.conn.Close()
	}
	ss.mu.Lock()
	ss.closed = true
	as, hs := ss.attachments, ss.handles
	ss.attachments, ss.handles = map[uint64]*attachment{}, map[uint64]*cachedObject{}
	ss.mu.Unlock()
	for _, a := range as {
		a.close()
	}
	for _, o := range hs {
		ss.s.release(o)
		ss.client.releaseObject(o.file.Cache.Size())
	}
	ss.s.clients.leave(ss.client)
}

func closeFile(f *os.File) {
	if f != nil {
		f.Close()
	}
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
