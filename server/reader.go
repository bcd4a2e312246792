package server

// The daemon's uffds are read by a pool of threads that wait in one epoll
// set holding every attached uffd with EPOLLONESHOT. epoll wakes one waiter
// per event (its waiters are exclusive), and a uffd, once reported, is not
// reported again until the reader that got it has read one message and
// armed it again: a fault wakes one idle reader, and a second fault of the
// same uffd, arriving meanwhile, the next. The reader serves the fault
// itself, its store read included. A fault then costs one wake of a handler
// thread and one of the faulter, as in a C handler, and not also the Go
// scheduler's hand-offs from the runtime's poller to a reading goroutine to
// a goroutine per fault. Measured with 4 KiB faults served from a file in
// /dev/shm (filemap bench): 64-92 µs a fault through the poller, 28-33 µs
// through the pool; C's floor here is 12-15 µs.
//
// A reader about to wait for I/O while no other reader is idle starts
// another, so that a slow read never holds up the faults behind it. The
// pool is bounded (maxReaders, an OS thread each while it waits); at the
// bound, a fault that must wait goes to a goroutine of its own instead.
// Readers beyond the first leave after readerIdle without a message, so
// the pool follows the faults in flight, not the uffds attached, which
// cost one epoll entry each.

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

const (
	maxReaders = 32
	readerIdle = 2 * time.Second
)

// stopData is the epoll data of the pool's stop eventfd; attachment ids
// start at 1.
const stopData = 0

// readerPool reads the uffds of one server's attachments.
type readerPool struct {
	log    *slog.Logger
	ep     int // the epoll set
	stopfd int // eventfd: readable once the pool closes

	wg sync.WaitGroup // readers running

	mu    sync.Mutex             // protects the fields below
	atts  map[uint64]*attachment // by id, the epoll data of its uffd
	n     int                    // readers started and not yet gone
	idle  int                    // readers waiting in epoll_wait
	close bool
}

func newReaderPool(log *slog.Logger) (*readerPool, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	stopfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	// Level-triggered: once written, every reader sees it, one after another.
	if err := epollCtl(ep, unix.EPOLL_CTL_ADD, stopfd, unix.EPOLLIN, stopData); err != nil {
		unix.Close(ep)
		unix.Close(stopfd)
		return nil, err
	}
	return &readerPool{log: log, ep: ep, stopfd: stopfd, atts: map[uint64]*attachment{}}, nil
}

func epollCtl(ep, op, fd int, events uint32, data uint64) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(data), Pad: int32(data >> 32)}
	if err := unix.EpollCtl(ep, op, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// oneShot is how a uffd waits in the set: reported once, then disarmed
// until its reader arms it again.
const oneShot = unix.EPOLLIN | unix.EPOLLONESHOT

// add starts reading a's uffd, unless a is closing: its close removes it
// from the pool after it closes a.stop, so one added before is removed.
func (p *readerPool) add(a *attachment) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-a.stop:
		return
	default:
	}
	if p.close {
		return
	}
	if err := epollCtl(p.ep, unix.EPOLL_CTL_ADD, a.u.Fd(), oneShot, a.id); err != nil {
		p.log.Error("uffd: cannot wait for its faults", "region", a.id, "err", err)
		return
	}
	p.atts[a.id] = a
	if p.n == 0 {
		p.startLocked()
	}
}

// remove stops reading a's uffd, and waits until no reader is serving a
// message of it, unless it is called by such a reader (self).
func (p *readerPool) remove(a *attachment, self bool) {
	p.mu.Lock()
	if p.atts[a.id] == a {
		delete(p.atts, a.id)
		unix.EpollCtl(p.ep, unix.EPOLL_CTL_DEL, a.u.Fd(), nil)
	}
	p.mu.Unlock()
	if !self {
		a.reading.Wait()
	}
}

// rearm lets a's uffd be reported again, once its reader has read one
// message: the next message goes to another reader.
func (p *readerPool) rearm(a *attachment) {
	err := epollCtl(p.ep, unix.EPOLL_CTL_MOD, a.u.Fd(), oneShot, a.id)
	if err != nil && !errors.Is(err, unix.ENOENT) { // ENOENT: removed meanwhile
		p.log.Error("uffd: cannot wait for its faults again; no longer serving this region", "region", a.id, "err", err)
	}
}

// closePool makes every reader leave, and waits for them.
func (p *readerPool) closePool() {
	p.mu.Lock()
	p.close = true
	p.mu.Unlock()
	one := [8]byte{1}
	unix.Write(p.stopfd, one[:])
	p.wg.Wait()
	unix.Close(p.ep)
	unix.Close(p.stopfd)
}

// startLocked starts a reader. Called with p.mu held.
func (p *readerPool) startLocked() {
	p.n++
	p.wg.Add(1)
	go p.reader()
}

// reader waits for a uffd to be readable, serves one message of it, and
// again, until the pool closes or it has been idle for long enough.
func (p *readerPool) reader() {
	defer p.wg.Done()
	var evs [1]unix.EpollEvent
	for {
		a, stop := p.wait(evs[:])
		if stop {
			return
		}
		if a != nil {
			a.readOne()
			a.reading.Done()
		}
	}
}

// wait waits, idle, for a uffd to be readable, and returns its attachment
// (whose reading the caller must end), if it is still attached; stop if
// this reader is to leave, and has left the pool's count.
func (p *readerPool) wait(evs []unix.EpollEvent) (a *attachment, stop bool) {
	p.mu.Lock()
	p.idle++
	p.mu.Unlock()
	n, err := unix.EpollWait(p.ep, evs, int(readerIdle/time.Millisecond))
	p.mu.Lock()
	defer p.mu.Unlock()
	p.idle--
	switch {
	case err == unix.EINTR:
		return nil, false
	case err != nil:
		p.log.Error("uffd: epoll_wait failed; a reader leaves", "err", err)
		p.n--
		return nil, true
	case n == 0:
		if p.n > 1 || p.close {
			p.n--
			return nil, true
		}
		return nil, false
	}
	id := uint64(uint32(evs[0].Fd)) | uint64(uint32(evs[0].Pad))<<32
	if id == stopData {
		p.n--
		return nil, true
	}
	a = p.atts[id]
	if a != nil {
		a.reading.Add(1)
	}
	return a, false
}

// busy is called by a reader about to wait for I/O. It reports whether the
// reader may do so: if no other reader is idle, it starts one, unless the
// pool is full, and then the caller must hand the wait to a goroutine.
func (p *readerPool) busy() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.idle > 0 || p.close {
		return true
	}
	if p.n >= maxReaders {
		return false
	}
	p.startLocked()
	return true
}

// readOne reads one message of a's uffd, if one is pending, arms the uffd
// again, and serves the message. Events (fork, mremap, munmap, MADV_REMOVE)
// are applied before the next message is read, as one reader would: so
// two events are applied in the order the kernel sent them, and a fault
// sent after an event finds the regions as the event left them. A fault is
// served after the next reader may read on.
func (a *attachment) readOne() {
	a.readMu.Lock()
	var msg [1]uffd.Msg
	n, err := a.u.Read(msg[:])
	switch {
	case errors.Is(err, unix.EAGAIN):
		a.ss.s.readers.rearm(a)
		a.readMu.Unlock()
	case err != nil:
		a.readMu.Unlock()
		a.ss.log.Error("uffd: read failed; no longer serving this region", "region", a.id, "err", err)
		a.ss.s.readers.remove(a, true)
	case n == 1 && msg[0].Event != uffd.EventPagefault:
		a.ss.s.readers.rearm(a)
		a.dispatch(&msg[0])
		a.readMu.Unlock()
	case n == 1:
		a.ss.s.readers.rearm(a)
		a.readMu.Unlock()
		a.dispatch(&msg[0])
	default:
		a.ss.s.readers.rearm(a)
		a.readMu.Unlock()
	}
}
