package server

// Surviving the daemon's death. Every attached region is kept in a keeper
// process (internal/fdstore): its userfaultfd, the cache file it maps, the
// object's file, and what the daemon knows of it; a fork child's too
// (fork.go). A daemon started on the
// same socket after a crash, or taking over from a running one, takes them
// all, adopts the cache files (pagecache.Adopt), serves the regions as
// orphans, and wakes them: the faults that waited through the outage run
// again and are served. The clients need not run to be served — a Go
// client whose threads wait in faults cannot: its garbage collector waits
// for them. When a client reconnects it resumes its regions (TResume), and
// they are its session's again; an orphan whose process exits is dropped.
// A fork child's region is served in a session of its own, as before.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/filemap/filemap/internal/fdstore"
	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/readahead"
	"github.com/filemap/filemap/store"
	"golang.org/x/sys/unix"
)

// keptRegion is what the keeper holds of an attachment besides its
// descriptors: [uffd, cache file, object's file if local].
type keptRegion struct {
	UID      uint32      `json:"uid"`
	URI      string      `json:"uri"`
	Name     string      `json:"name"`
	Version  string      `json:"version"`
	Size     int64       `json:"size"`
	Local    bool        `json:"local"`
	Private  bool        `json:"private,omitempty"` // a cache a client handed back: it stays private (adopt)
	Features uint64      `json:"features"`
	Ranges   []keptRange `json:"ranges"`
	// Fork marks a fork(2) child's region, whose process the daemon cannot
	// name: Parent is the client it forked from, whose account it counts
	// in (fork.go).
	Fork   bool  `json:"fork,omitempty"`
	Parent int32 `json:"parent,omitempty"`
}

type keptRange struct {
	Addr   uint64 `json:"addr"`
	PgOff  int64  `json:"pgoff"`
	NPages int64  `json:"npages"`
	Advice string `json:"advice"`
}

// retrieveTimeout bounds the wait for a predecessor to exit in a takeover.
const retrieveTimeout = 30 * time.Second

// Keep makes the daemon's clients survive its death. It serves the
// regions a previous daemon on socket left in its keeper (entries, from
// Kept) and starts a keeper of its own. Call it before Serve. A region
// that cannot be served, or a keeper that cannot start, is logged: the
// daemon serves all the same.
func (s *Server) Keep(socket string, entries []fdstore.Entry) {
	s.KeepRespawn(socket, entries, nil)
}

// KeepRespawn is Keep for a daemon that nothing would start again, such as
// a private handler: if it dies with regions kept, its keeper runs it
// again (fdstore.Respawn).
func (s *Server) KeepRespawn(socket string, entries []fdstore.Entry, respawn *fdstore.Respawn) {
	// Serve first, keep after: the faults waiting through the outage come
	// before starting the keeper process.
	restored := fdstore.Restore(entries, &s.nextID, s.restore, func(e fdstore.Entry, err error) {
		s.log.Error("cannot serve a region of the previous daemon: its faults stall", "region", e.ID, "pid", e.Pid, "err", err)
	})
	if len(entries) > 0 {
		s.log.Info("took over the previous daemon's regions", "regions", len(restored), "of", len(entries))
		go s.reapOrphans()
	}
	k, err := fdstore.Start(socket, respawn)
	if err != nil {
		// Serving without a keeper beats not serving: only a crash loses.
		s.log.Error("no keeper: clients will not survive this daemon's death", "err", err)
		return
	}
	s.mu.Lock()
	s.keeper = k
	s.mu.Unlock()
	for _, a := range restored {
		a.keep()
	}
}

// Forget tells the keeper to drop every region and exit: the daemon stops
// for good, and so do its clients (a private handler whose parent exited).
func (s *Server) Forget() {
	s.mu.Lock()
	k := s.keeper
	s.keeper = nil
	s.mu.Unlock()
	if k != nil {
		k.Close(true)
	}
}

// keep puts the attachment in the keeper: from now on it outlives the
// daemon. An entry's process is the client's; a fork child's the daemon
// cannot name, so the keeper asks the child's uffd instead whether the
// child's memory is still there (fdstore.Entry.Probe).
func (a *attachment) keep() {
	s, o := a.ss.s, a.obj
	s.mu.Lock() // o.uri and o.localFile are set under it, by the session that opens o
	k, uri, file := s.keeper, o.uri, o.localFile
	s.mu.Unlock()
	if k == nil {
		return
	}
	d := keptRegion{UID: o.key.uid, URI: uri, Name: o.file.Cache.Name(), Version: o.key.version,
		Size: o.file.Cache.Size(), Features: a.features, Local: file != nil, Private: o.private()}
	a.mu.Lock()
	for _, r := range a.regions {
		d.Ranges = append(d.Ranges, keptRange{Addr: uint64(r.Addr), PgOff: r.PgOff, NPages: r.NPages, Advice: r.Advice().String()})
	}
	a.mu.Unlock()
	e := fdstore.Entry{ID: a.id, Pid: int(a.ss.cred.Pid)}
	if a.forked {
		if len(d.Ranges) == 0 {
			return // the child unmapped it all: it is ending
		}
		d.Fork, d.Parent = true, a.ss.cred.Pid
		e.Pid, e.Probe = 0, d.Ranges[0].Addr
	}
	e.Files = []*os.File{a.file, o.file.Cache.File()}
	if file != nil {
		e.Files = append(e.Files, file)
	}
	e.Desc, _ = json.Marshal(d)
	if err := k.Put(e); err != nil {
		s.log.Error("the keeper lost a region: it will not survive a crash of this daemon", "region", a.id, "err", err)
		return
	}
	a.kept.Store(true)
}

// unkeep drops the attachment from the keeper, unless the daemon is
// closing: a daemon stopped leaves its regions to its successor.
func (a *attachment) unkeep() {
	s := a.ss.s
	s.mu.Lock()
	k, closing := s.keeper, s.closed
	s.mu.Unlock()
	if k != nil && a.kept.Load() && !closing {
		k.Delete(a.id)
		a.kept.Store(false)
	}
}

// keptForSuccessor reports whether the keeper holds a for the next daemon:
// this one is closing, a is in its keeper, and the keeper runs.
func (a *attachment) keptForSuccessor() bool {
	s := a.ss.s
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed && s.keeper != nil && a.kept.Load()
}

// restore serves a region the previous daemon left: a client's as an
// orphan of its process until that process resumes it, a fork child's as
// fork does (fork.go).
func (s *Server) restore(e fdstore.Entry) (*attachment, error) {
	defer closeAll(e.Files)
	var d keptRegion
	if err := json.Unmarshal(e.Desc, &d); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if !d.Local {
		// A predecessor that named caches by the raw URI, password and
		// all, must not pass that name on to this daemon's logs.
		d.Name = store.Redact(d.URI)
	}
	want := 2
	if d.Local {
		want = 3
	}
	if len(e.Files) != want {
		return nil, fmt.Errorf("%s: %d descriptors kept, want %d", d.Name, len(e.Files), want)
	}
	if d.Fork {
		return s.restoreFork(e, d)
	}
	st, hangs, err := s.reopenStore(d, e.Files)
	if err != nil {
		return nil, err
	}
	ss := s.orphanSession(int32(e.Pid), d.UID)
	size := st.Size()
	if err := ss.client.reserveObject(d.Name, size); err != nil {
		st.Close()
		return nil, err
	}
	o, err := s.adoptKept(d, st, hangs, e.Files)
	if err != nil {
		ss.client.releaseObject(size)
		return nil, err
	}
	a, err := newAttachment(ss, dupFile(e.Files[0]), d.Features)
	if err != nil {
		s.release(o)
		ss.client.releaseObject(size)
		return nil, err
	}
	a.id, a.obj = e.ID, o
	a.hold(o)
	a.addKept(d.Ranges)
	ss.client.addRegion()
	h := s.nextID.Add(1)
	ss.mu.Lock()
	ss.handles[h] = o
	ss.attachments[a.id] = a
	ss.mu.Unlock()
	a.serve()
	a.wakeKept(d.Ranges)
	return a, nil
}

// adoptKept makes the cache of a kept region's object, from its store st
// and its kept cache file, with a reference for the caller.
func (s *Server) adoptKept(d keptRegion, st store.Store, hangs bool, files []*os.File) (*cachedObject, error) {
	o, err := s.adopt(d.UID, d.Name, st, hangs, dupFile(files[1]), d.Private)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if d.Local {
		o.keepFileLocked(dupFile(files[2]))
	}
	if o.uri == "" {
		o.uri = d.URI
	}
	s.mu.Unlock()
	return o, nil
}

// addKept gives a the regions of a kept region's ranges, of its object.
func (a *attachment) addKept(ranges []keptRange) {
	for _, r := range ranges {
		adv, _ := readahead.ParseAdvice(r.Advice)
		a.add(&a.obj.file, uintptr(r.Addr), r.PgOff, r.NPages, adv)
	}
}

// wakeKept wakes the faults that waited through the outage in a's kept
// ranges: the kernel will not send them again, and woken they fault again.
func (a *attachment) wakeKept(ranges []keptRange) {
	for _, r := range ranges {
		a.u.Wake(uintptr(r.Addr), uintptr(r.NPages)*ps)
	}
}

// reopenStore opens the kept region's object again, at the version the
// region shows; if that version is gone, reads fail (SIGBUS for the pages
// the cache lacks).
func (s *Server) reopenStore(d keptRegion, files []*os.File) (store.Store, bool, error) {
	var st store.Store
	hangs := false
	if d.Local {
		f := dupFile(files[2])
		hangs = mayHang(f)
		fs, err := store.NewFile(f, d.Name)
		if err != nil {
			f.Close()
			return nil, false, err
		}
		st = fs
	} else {
		uri, err := store.ParseURI(d.URI)
		if err != nil {
			return nil, false, err
		}
		if st, err = s.remotes.Reopen(context.Background(), uri, d.Version); err != nil {
			return errStore{name: d.Name, version: d.Version, size: d.Size, err: err}, false, nil
		}
	}
	return s.pin(st, d.Name, d.Version, d.Size), hangs, nil
}

// dupFile is a descriptor of its own for f's file, which its taker owns.
func dupFile(f *os.File) *os.File {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return f // cannot happen short of EMFILE; the caller's close then fails harmlessly
	}
	return os.NewFile(uintptr(fd), f.Name())
}

// orphanSession is the session of the restored regions of client pid,
// made on first use.
func (s *Server) orphanSession(pid int32, uid uint32) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.orphans[pid]; ss != nil {
		return ss
	}
	cred := &unix.Ucred{Pid: pid, Uid: uid}
	ss := &session{s: s, cred: cred, log: s.log.With("pid", pid, "uid", uid, "orphan", true),
		client: s.clients.join(cred), handles: make(map[uint64]*cachedObject), attachments: make(map[uint64]*attachment)}
	s.orphans[pid] = ss
	return ss
}

// reapOrphans drops the orphans whose process has exited, every second,
// until none is left.
func (s *Server) reapOrphans() {
	for range time.Tick(time.Second) {
		s.mu.Lock()
		var dead []*session
		for pid, ss := range s.orphans {
			if err := unix.Kill(int(pid), 0); errors.Is(err, unix.ESRCH) {
				dead = append(dead, ss)
				delete(s.orphans, pid)
			}
		}
		left, closed := len(s.orphans), s.closed
		s.mu.Unlock()
		for _, ss := range dead {
			ss.close()
		}
		if left == 0 || closed {
			return
		}
	}
}

// resume makes a region the previous daemon served for this client process
// this session's own again, and returns its handle.
func (ss *session) resume(req proto.Resume) (proto.ResumeReply, error) {
	s := ss.s
	s.mu.Lock()
	orphan := s.orphans[ss.cred.Pid]
	s.mu.Unlock()
	if orphan == nil || orphan.cred.Uid != ss.cred.Uid {
		return proto.ResumeReply{}, fmt.Errorf("resume: process %d has no region %d to resume", ss.cred.Pid, req.Region)
	}
	orphan.mu.Lock()
	a := orphan.attachments[req.Region]
	var h uint64
	if a != nil {
		delete(orphan.attachments, req.Region)
		for id, o := range orphan.handles {
			if o == a.obj {
				h = id
				delete(orphan.handles, id)
				break
			}
		}
	}
	empty := len(orphan.attachments) == 0
	orphan.mu.Unlock()
	if a == nil {
		return proto.ResumeReply{}, fmt.Errorf("resume: process %d has no region %d to resume", ss.cred.Pid, req.Region)
	}
	ss.mu.Lock()
	ss.attachments[a.id] = a
	ss.handles[h] = a.obj
	ss.mu.Unlock()
	if empty {
		s.mu.Lock()
		if s.orphans[ss.cred.Pid] == orphan {
			delete(s.orphans, ss.cred.Pid)
		}
		s.mu.Unlock()
		orphan.close() // nothing left in it; the account stays with ss
	}
	return proto.ResumeReply{Handle: h}, nil
}

// errStore is an object that could not be opened again: reads fail.
type errStore struct {
	name, version string
	size          int64
	err           error
}

func (e errStore) ReadAt([]byte, int64) (int, error) {
	return 0, fmt.Errorf("%s: cannot open it again after a restart: %w", e.name, e.err)
}
func (e errStore) Close() error    { return nil }
func (e errStore) Size() int64     { return e.size }
func (e errStore) Key() string     { return e.name }
func (e errStore) Version() string { return e.version }
