// Package fdstore keeps a daemon's descriptors alive across its death, in a
// process of their own: systemd's file descriptor store (FDSTORE=1), with
// no systemd. The daemon puts each entry — a description and the
// descriptors it names, such as a client's userfaultfd and the cache file
// it maps — as it makes it, and deletes it when done. If the daemon dies,
// the keeper holds on to them until the next daemon on the same socket
// takes them all, and then exits: that daemon serves its predecessor's
// clients without their help. A Go client whose threads wait in page
// faults cannot help: its garbage collector waits for them to stop, and
// they wait for a handler.
//
// The keeper is the daemon's executable run again, recognised by this
// package's init function. It is in a process group of its own, so a
// signal to the daemon's group (^C) does not reach it; it exits when its
// daemon closes it, when a successor has taken its entries, or when the
// daemon is gone and every process its entries name has exited.
package fdstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/filemap/filemap/proto"
	"golang.org/x/sys/unix"
)

// Frame types between a daemon and its keeper (proto's framing, its own
// types).
const (
	tPut   proto.Type = 0x40 // Entry header + descriptors: add or replace
	tDel   proto.Type = 0x41 // Entry header: drop
	tQuit  proto.Type = 0x42 // the daemon is closing for good: forget everything
	tEntry proto.Type = 0x43 // to a successor: one entry + its descriptors
	tEnd   proto.Type = 0x44 // to a successor: no more entries
)

const (
	envKeeper  = "FILEMAP_FDSTORE_KEEPER"  // the socket a successor connects to
	envRespawn = "FILEMAP_FDSTORE_RESPAWN" // set: run the daemon again when it dies
	envQuick   = "FILEMAP_FDSTORE_QUICK"   // how many times in a row it died within a second
)

// Entry is one thing the daemon keeps: Desc is the daemon's own, and Pid
// the client process it is for (the keeper forgets an entry whose process
// has exited). An entry for a process the daemon cannot name, a fork(2)
// child, which the kernel gives a handler only as a userfaultfd, has Pid 0
// and Probe, an address in the child's memory: its Files[0] is that
// userfaultfd, and the keeper forgets it once the child's memory is gone
// (uffd.UFFD.Alive).
type Entry struct {
	ID    uint64          `json:"id"`
	Pid   int             `json:"pid"`
	Probe uint64          `json:"probe,omitempty"`
	Desc  json.RawMessage `json:"desc,omitempty"`
	Files []*os.File      `json:"-"`
}

// Store is a daemon's connection to its keeper. Its methods are safe for
// concurrent use.
type Store struct {
	conn *proto.Conn
	cmd  *exec.Cmd
}

// Path is where the keeper of the daemon listening at socket waits for a
// successor.
func Path(socket string) string { return socket + ".keeper" }

// Respawn asks the keeper to run the daemon again, as this process was run
// (its executable and environment), with Files as its descriptors 3 and
// on, if it dies with regions kept: a private handler has no supervisor
// but its client, and a client waiting in page faults cannot act.
type Respawn struct {
	Files []*os.File
}

// Start runs a keeper for the daemon listening at socket.
func Start(socket string, respawn *Respawn) (*Store, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("fdstore: start a keeper: %w", err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fdstore: socketpair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "keeper"), os.NewFile(uintptr(fds[1]), "keeper")
	cmd := exec.Command(exe)
	// What ps shows: the executable is the daemon's, its job is not.
	cmd.Args = []string{"filemap-keeper", Path(socket)}
	cmd.Env = append(os.Environ(), envKeeper+"="+Path(socket))
	cmd.ExtraFiles = []*os.File{theirs}
	if respawn != nil {
		cmd.Env = append(cmd.Env, envRespawn+"="+strconv.Itoa(len(respawn.Files)))
		cmd.ExtraFiles = append(cmd.ExtraFiles, respawn.Files...)
	}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	// The keeper's end is the keeper's alone: a keeper that fails before it
	// answers must leave us reading EOF, not waiting.
	theirs.Close()
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("fdstore: start a keeper (%s): %w", exe, err)
	}
	go cmd.Wait()
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("fdstore: %w", err)
	}
	s := &Store{conn: proto.NewConn(c.(*net.UnixConn)), cmd: cmd}
	// The keeper answers once it listens for a successor: from then on a
	// successor that finds no keeper knows there is none.
	if _, err := s.conn.ReadFrame(); err != nil {
		s.conn.Close()
		return nil, fmt.Errorf("fdstore: the keeper at %s did not start (its own message says why): %w", Path(socket), err)
	}
	return s, nil
}

// Put adds or replaces entry e.ID. The keeper holds its own copies of the
// descriptors.
func (s *Store) Put(e Entry) error {
	if err := s.conn.WriteFrame(proto.Frame{Type: tPut, Payload: proto.Marshal(e), Fds: e.Files}); err != nil {
		return fmt.Errorf("fdstore: put entry %d: %w", e.ID, err)
	}
	return nil
}

// Delete drops entry id.
func (s *Store) Delete(id uint64) error {
	if err := s.conn.WriteFrame(proto.Frame{Type: tDel, Payload: proto.Marshal(Entry{ID: id})}); err != nil {
		return fmt.Errorf("fdstore: delete entry %d: %w", id, err)
	}
	return nil
}

// Close lets go of the keeper. With forget set it drops every entry and
// exits; otherwise it keeps them for a successor, as if the daemon had died.
func (s *Store) Close(forget bool) error {
	if forget {
		s.conn.WriteFrame(proto.Frame{Type: tQuit, Payload: proto.Marshal(struct{}{})})
	}
	return s.conn.Close()
}

// Retrieve takes every entry from the keeper a previous daemon on socket
// left, waiting (up to timeout) for that daemon to exit if it still runs,
// as in a takeover. No keeper is no entries.
func Retrieve(socket string, timeout time.Duration) ([]Entry, error) {
	nc, err := net.DialTimeout("unix", Path(socket), timeout)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fdstore: connect to the keeper at %s: %w", Path(socket), err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(timeout))
	c := proto.NewConn(nc.(*net.UnixConn))
	var out []Entry
	for {
		f, err := c.ReadFrame()
		if errors.Is(err, io.EOF) && out == nil {
			return nil, nil // it had nothing to keep, and exited as we connected
		}
		if err != nil {
			closeEntries(out)
			return nil, fmt.Errorf("fdstore: read the keeper's entries at %s: %w", Path(socket), err)
		}
		if f.Type == tEnd {
			return out, nil
		}
		var e Entry
		if f.Type != tEntry || proto.Unmarshal(f.Payload, &e) != nil {
			f.CloseFds()
			closeEntries(out)
			return nil, fmt.Errorf("fdstore: the keeper at %s sent a bad %v frame", Path(socket), f.Type)
		}
		e.Files = f.Fds
		out = append(out, e)
	}
}

func closeEntries(es []Entry) {
	for _, e := range es {
		for _, f := range e.Files {
			f.Close()
		}
	}
}

// Restore makes what a daemon serves of the entries its predecessor left
// (from Retrieve): it moves next, the daemon's ID counter, past every
// entry's ID, so that new entries never replace kept ones, and calls
// restore on each entry, in order. Those restore fails on go to failed,
// to be logged: their clients stall rather than the daemon failing.
func Restore[T any](entries []Entry, next *atomic.Uint64, restore func(Entry) (T, error), failed func(Entry, error)) []T {
	for _, e := range entries {
		if e.ID >= next.Load() {
			next.Store(e.ID + 1)
		}
	}
	var done []T
	for _, e := range entries {
		x, err := restore(e)
		if err != nil {
			failed(e, err)
			continue
		}
		done = append(done, x)
	}
	return done
}
