package firecracker

// Surviving the handler's death, as `filemap serve` does (server/keep.go):
// every VM's connection, userfaultfd and state (vmState: which pages the
// balloon removed), and the regions its VMM sent, are kept in a keeper
// process (internal/fdstore). A handler started again on the same socket
// takes them, serves the VMs and wakes their regions: the guests' faults
// that waited through the outage are served, and no VMM does anything —
// Firecracker sends its handshake once.

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/filemap/filemap/internal/fdstore"
	"golang.org/x/sys/unix"
)

// Keep makes the VMs survive the handler's death: it takes over the VMs a
// previous handler on socket left in its keeper, if any, and starts a
// keeper of its own. Call it before Serve. A keeper that cannot start is
// logged, not an error.
func (s *Server) Keep(socket string) error {
	entries, err := fdstore.Retrieve(socket, 30*time.Second)
	if err != nil {
		return err
	}
	adopted := fdstore.Restore(entries, &s.nextID, s.adoptVM, func(e fdstore.Entry, err error) {
		s.log.Error("firecracker: cannot serve a VM of the previous handler: its faults stall", "vm", e.ID, "pid", e.Pid, "err", err)
	})
	if len(entries) > 0 {
		s.log.Info("firecracker: took over the previous handler's VMs", "vms", len(adopted), "of", len(entries))
	}
	k, err := fdstore.Start(socket, nil)
	if err != nil {
		s.log.Error("firecracker: no keeper: VMs will not survive this handler's death", "err", err)
	} else {
		s.mu.Lock()
		s.keeper = k
		s.mu.Unlock()
	}
	for _, v := range adopted {
		v.keep()
		go func() {
			defer s.adopted.Done()
			s.runVM(v)
		}()
	}
	return nil
}

// adoptVM makes the handler of a VM the previous handler served, from what
// its keeper held: [the VMM's connection, its userfaultfd, its state's
// memfd] and the handshake's regions. A handler before the state kept the
// first two only: its VM is served with its removed pages unknown.
func (s *Server) adoptVM(e fdstore.Entry) (*vm, error) {
	defer func() {
		for _, f := range e.Files {
			f.Close()
		}
	}()
	var kept *os.File
	switch len(e.Files) {
	case 2:
	case 3:
		kept = e.Files[2]
	default:
		return nil, fmt.Errorf("%d descriptors kept, want 3 (or 2)", len(e.Files))
	}
	nc, err := net.FileConn(e.Files[0])
	if err != nil {
		return nil, fmt.Errorf("the VMM's connection: %w", err)
	}
	c, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		return nil, fmt.Errorf("the VMM's connection is not a Unix socket")
	}
	fd, err := unix.FcntlInt(e.Files[1].Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("dup the userfaultfd: %w", err)
	}
	o, err := s.acquire(context.Background())
	if err != nil {
		c.Close()
		unix.Close(fd)
		return nil, fmt.Errorf("open the memory file %s: %w", s.cfg.Name, err)
	}
	regions, err := ParseRegions(e.Desc, o.file.Cache.Size())
	if err != nil {
		c.Close()
		unix.Close(fd)
		s.release(o)
		return nil, err
	}
	v, err := newVM(s, e.ID, s.log.With("vm", e.ID, "pid", e.Pid, "adopted", true), c, fd, o, regions, false, kept)
	if err != nil {
		c.Close()
		s.release(o)
		return nil, err
	}
	v.pid, v.payload = e.Pid, e.Desc
	v.replayRemoves()
	s.adopted.Add(1)
	// The guests' threads that faulted while no handler ran wait on
	// messages the dead one read: woken, they fault again, to us.
	for _, r := range v.regions {
		v.u.Wake(r.Base, r.Size)
	}
	return v, nil
}

// keep puts the VM in the keeper.
func (v *vm) keep() {
	s := v.s
	s.mu.Lock()
	k := s.keeper
	s.mu.Unlock()
	if k == nil {
		return
	}
	conn, err := v.conn.File()
	if err != nil {
		v.log.Error("firecracker: the keeper lost a VM: it will not survive this handler's death", "err", err)
		return
	}
	defer conn.Close()
	fd, err := unix.FcntlInt(uintptr(v.u.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		v.log.Error("firecracker: the keeper lost a VM: it will not survive this handler's death", "err", err)
		return
	}
	u := os.NewFile(uintptr(fd), "uffd")
	defer u.Close()
	if err := k.Put(fdstore.Entry{ID: v.id, Pid: v.pid, Desc: v.payload, Files: []*os.File{conn, u, v.st.f}}); err != nil {
		v.log.Error("firecracker: the keeper lost a VM: it will not survive this handler's death", "err", err)
	}
}
