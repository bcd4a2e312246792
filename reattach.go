package filemap

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/filemap/filemap/proto"
	"golang.org/x/sys/unix"
)

// Reconnecting to a handler that went away: the first retry comes soon (a
// takeover or a supervisor's restart takes milliseconds), later ones back
// off to reconnectMax, and a failure is logged at most every
// reconnectLogEvery.
const (
	reconnectMin      = 5 * time.Millisecond
	reconnectMax      = time.Second
	reconnectLogEvery = 10 * time.Second
)

// keepAttached waits for the loss of the mapping's handler and attaches
// the mapping to the next one, until Close.
func (m *Mapping) keepAttached(c *client) {
	defer close(m.watched)
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-c.lost:
		}
		lost := time.Now()
		slog.Warn("filemap: lost the handler; the mapping's faults wait until it re-attaches",
			"uri", m.name, "err", c.err)
		var err error
		if c, err = m.reconnect(); err != nil {
			return // closed
		}
		slog.Info("filemap: re-attached to a handler", "uri", m.name, "after", time.Since(lost))
	}
}

// reconnect connects and re-attaches, backing off, until it succeeds or
// the mapping is closed.
func (m *Mapping) reconnect() (*client, error) {
	delay := reconnectMin
	var logged time.Time
	for {
		c, err := connect(m.ctx, m.socket, m.private)
		if err == nil {
			if err = m.resume(c); err == nil {
				return c, nil
			}
			if err = m.reattach(c); err == nil {
				return c, nil
			}
			c.close()
		}
		if m.ctx.Err() != nil {
			return nil, m.ctx.Err()
		}
		if time.Since(logged) >= reconnectLogEvery {
			slog.Warn("filemap: cannot re-attach yet; retrying", "uri", m.name, "err", err)
			logged = time.Now()
		}
		select {
		case <-m.ctx.Done():
			return nil, m.ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, reconnectMax)
	}
}

// resume takes the mapping's region back from a daemon that serves it
// already: it took the region over from the previous daemon's keeper, and
// has been serving its faults since, whether or not this process could run.
func (m *Mapping) resume(c *client) error {
	m.mu.Lock()
	region := m.region
	m.mu.Unlock()
	var rr proto.ResumeReply
	if _, err := c.call(m.ctx, proto.TResume, proto.Resume{Region: region}, nil, &rr); err != nil {
		return fmt.Errorf("resume region %d of %s: %w", region, m.name, err)
	}
	m.mu.Lock()
	m.c, m.handle = c, rr.Handle
	m.mu.Unlock()
	return nil
}

// reattach opens the object again on c, at the version the mapping shows,
// handing back the cache file the mapping maps so that the handler adopts
// it, and attaches the mapping's uffd.
func (m *Mapping) reattach(c *client) error {
	send := []*os.File{m.memfd}
	if m.file != nil {
		send = []*os.File{m.file, m.memfd}
	}
	var or proto.OpenReply
	fds, err := c.call(m.ctx, proto.TOpen, proto.Open{URI: m.uri, Version: m.version, Cache: true, Size: m.size}, send, &or)
	if err != nil {
		return fmt.Errorf("re-open %s: %w", m.name, err)
	}
	same := len(fds) == 1 && sameFile(fds[0], m.memfd)
	closeFiles(fds)
	if !same {
		return fmt.Errorf("re-open %s: the handler did not adopt the cache file the mapping maps", m.name)
	}
	m.mu.Lock()
	advice := m.advice
	m.mu.Unlock()
	region, err := m.attach(m.ctx, c, or.Handle, advice)
	if err != nil {
		return fmt.Errorf("re-attach %s: %w", m.name, err)
	}
	m.mu.Lock()
	m.c, m.handle, m.region = c, or.Handle, region
	again := m.advice != advice // Advise ran meanwhile, on the lost connection
	advice = m.advice
	m.mu.Unlock()
	if again {
		c.call(m.ctx, proto.TAdvise, proto.Advise{Region: region, Advice: advice.String()}, nil, nil)
	}
	return nil
}

func sameFile(a, b *os.File) bool {
	var sa, sb unix.Stat_t
	return unix.Fstat(int(a.Fd()), &sa) == nil && unix.Fstat(int(b.Fd()), &sb) == nil &&
		sa.Dev == sb.Dev && sa.Ino == sb.Ino
}
