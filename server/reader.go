package server

// The daemon's uffds are read by a pool of threads, each waiting in an
// epoll set of its own that holds every attached uffd with EPOLLEXCLUSIVE:
// a fault wakes one idle reader, as a wait queue's exclusive waiters are
// woken one at a time, and that reader serves the fault itself, its store
// read included. A fault then costs one wake of a handler thread and one
// of the faulter, as in a C handler, and not also the Go scheduler's hand-
// offs from the runtime's poller to a reading goroutine to a goroutine per
// fault. Measured with 4 KiB faults served from a file in /dev/shm: 60-85
// µs a fault through the poller, 23-35 µs through the pool; C's floor here
// is 14 µs.
//
// A reader about to wait for I/O while no other reader is idle starts
// another, so that a slow read never holds up the faults behind it. The
// pool is bounded (maxReaders, an OS thread each while it waits); at the
// bound, a fault that must wait goes to a goroutine of its own instead.
// Readers beyond the first leave after readerIdle without a message, so
// the pool follows the faults in flight, not the uffds attached.

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

// readerPool reads the uffds of one server's attachments.
type readerPool struct {
	log    *slog.Logger
	stopfd int // eventfd: readable once the pool closes

	mu    sync.Mutex
	atts  map[uint64]*attachment // by id, the epoll data of its uffd
	eps   map[int]struct{}       // the readers' epoll sets
	n     int                    // readers started and not yet gone
	idle  int                    // readers waiting in epoll_wait
	wg    sync.WaitGroup
	close bool
}

func newReaderPool(log *slog.Logger) (*readerPool, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &readerPool{log: log, stopfd: fd, atts: map[uint64]*attachment{}, eps: map[int]struct{}{}}, nil
}

// add starts reading a's uffd.
func (p *readerPool) add(a *attachment) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.close {
		return
	}
	p.atts[a.id] = a
	for ep := range p.eps {
		if err := watch(ep, a); err != nil {
			p.log.Error("uffd: cannot wait for its faults", "region", a.id, "err", err)
		}
	}
	if p.n == 0 {
		p.start()
	}
}

// remove stops reading a's uffd, and waits until no reader is serving a
// message of it, unless it is called by such a reader (self).
func (p *readerPool) remove(a *attachment, self bool) {
	p.mu.Lock()
	if p.atts[a.id] == a {
		delete(p.atts, a.id)
		for ep := range p.eps {
			unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, a.u.Fd(), nil)
		}
	}
	p.mu.Unlock()
	if !self {
		a.reading.Wait()
	}
}

// closePool makes every reader leave, and waits for them.
func (p *readerPool) closePool() {
	p.mu.Lock()
	p.close = true
	p.mu.Unlock()
	one := [8]byte{1}
	unix.Write(p.stopfd, one[:]) // stays readable: every reader sees it
	p.wg.Wait()
	unix.Close(p.stopfd)
}

// start starts a reader. Called with p.mu held.
func (p *readerPool) start() {
	ep, err := p.epoll()
	if err != nil {
		p.log.Error("uffd: cannot start a reader", "err", err)
		return
	}
	p.n++
	p.eps[ep] = struct{}{}
	p.wg.Add(1)
	go p.reader(ep)
}

// epoll makes a reader's epoll set: the stop fd and every uffd. Called
// with p.mu held, so that no uffd is added or removed meanwhile.
func (p *readerPool) epoll() (int, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("epoll_create1: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1, Pad: -1}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, p.stopfd, &ev); err != nil {
		unix.Close(ep)
		return -1, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	for _, a := range p.atts {
		if err := watch(ep, a); err != nil {
			unix.Close(ep)
			return -1, err
		}
	}
	return ep, nil
}

// watch adds a's uffd to the epoll set ep, exclusively, with a's id as its
// data: a uffd's fd number may be reused once it closes, its id is not.
func watch(ep int, a *attachment) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(a.id), Pad: int32(a.id >> 32)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, a.u.Fd(), &ev); err != nil {
		return fmt.Errorf("epoll_ctl uffd: %w", err)
	}
	return nil
}

// reader waits for a uffd to be readable, reads one message of it, serves
// it, and again, until the pool closes or it has been idle for long enough.
func (p *readerPool) reader(ep int) {
	defer p.wg.Done()
	defer unix.Close(ep)
	var evs [1]unix.EpollEvent
	for {
		a, stop := p.wait(ep, evs[:])
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
// this reader is to leave, and has left the pool.
func (p *readerPool) wait(ep int, evs []unix.EpollEvent) (a *attachment, stop bool) {
	p.mu.Lock()
	p.idle++
	p.mu.Unlock()
	n, err := unix.EpollWait(ep, evs, int(readerIdle/time.Millisecond))
	p.mu.Lock()
	defer p.mu.Unlock()
	p.idle--
	switch {
	case err == unix.EINTR:
		return nil, false
	case err != nil:
		p.log.Error("uffd: epoll_wait failed; a reader leaves", "err", err)
		return nil, p.leave(ep)
	case n == 0:
		if p.n > 1 || p.close {
			return nil, p.leave(ep)
		}
		return nil, false
	case evs[0].Fd == -1 && evs[0].Pad == -1:
		return nil, p.leave(ep)
	}
	a = p.atts[uint64(uint32(evs[0].Fd))|uint64(evs[0].Pad)<<32]
	if a != nil {
		a.reading.Add(1)
	}
	return a, false
}

// leave takes a reader out of the pool. Called with p.mu held.
func (p *readerPool) leave(ep int) bool {
	p.n--
	delete(p.eps, ep)
	return true
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
	p.start()
	return true
}

// readOne reads and serves one message of a's uffd, if one is pending.
func (a *attachment) readOne() {
	var msg [1]uffd.Msg
	n, err := a.u.Read(msg[:])
	switch {
	case errors.Is(err, unix.EAGAIN):
	case err != nil:
		a.ss.log.Error("uffd: read failed; no longer serving this region", "region", a.id, "err", err)
		a.ss.s.readers.remove(a, true)
	case n == 1:
		a.dispatch(&msg[0])
	}
}
