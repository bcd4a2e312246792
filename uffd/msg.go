//go:build linux

package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Msg is one message read from a userfaultfd (struct uffd_msg): a page fault
// or, with the matching Feature*, a non-cooperative event. Event says which
// of the other fields are meaningful.
type Msg struct {
	Event uint8 // EventPagefault, EventFork, ...

	// EventPagefault: the faulting address (page-masked unless
	// FeatureExactAddress), PagefaultFlag* bits, and the faulting thread's
	// id with FeatureThreadID.
	Flags   uint64
	Address uint64
	PTID    uint32

	// EventFork: the child's new userfaultfd, already installed in the
	// reader's descriptor table. The reader owns it and must close it.
	UFD int

	// EventRemap: mremap moved [From, From+Len) to [To, To+Len).
	From, To, Len uint64

	// EventRemove (MADV_DONTNEED, MADV_REMOVE) and EventUnmap (munmap, or a
	// mapping placed over the range): the range [Start, End).
	Start, End uint64
}

// DecodeMsg decodes one struct uffd_msg: exactly MsgSize bytes in the
// machine's byte order, laid out as
//
//	u8 event, u8 reserved1, u16 reserved2, u32 reserved3, then a 24-byte union
//
// It fails on a short or long buffer and on an event it does not know.
func DecodeMsg(b []byte) (Msg, error) {
	if len(b) != MsgSize {
		return Msg{}, fmt.Errorf("uffd: message of %d bytes, want %d", len(b), MsgSize)
	}
	return decode(b)
}

// decode is DecodeMsg without the length check. On an unknown event it
// still returns a Msg carrying that event.
func decode(b []byte) (Msg, error) {
	ne := binary.NativeEndian
	arg := b[8:MsgSize]
	m := Msg{Event: b[0]}
	switch m.Event {
	case EventPagefault:
		m.Flags = ne.Uint64(arg[0:])
		m.Address = ne.Uint64(arg[8:])
		m.PTID = ne.Uint32(arg[16:])
	case EventFork:
		m.UFD = int(int32(ne.Uint32(arg[0:])))
	case EventRemap:
		m.From = ne.Uint64(arg[0:])
		m.To = ne.Uint64(arg[8:])
		m.Len = ne.Uint64(arg[16:])
	case EventRemove, EventUnmap:
		m.Start = ne.Uint64(arg[0:])
		m.End = ne.Uint64(arg[8:])
	default:
		return m, fmt.Errorf("uffd: unknown event %#02x", m.Event)
	}
	return m, nil
}

// String describes the message the way a log line would, e.g.
// "pagefault addr=0x7f0000001000 flags=write ptid=42".
func (m Msg) String() string {
	switch m.Event {
	case EventPagefault:
		s := fmt.Sprintf("pagefault addr=%#x flags=%s", m.Address, pagefaultFlags(m.Flags))
		if m.PTID != 0 {
			s += fmt.Sprintf(" ptid=%d", m.PTID)
		}
		return s
	case EventFork:
		return fmt.Sprintf("fork ufd=%d", m.UFD)
	case EventRemap:
		return fmt.Sprintf("remap from=%#x to=%#x len=%#x", m.From, m.To, m.Len)
	case EventRemove:
		return fmt.Sprintf("remove [%#x, %#x)", m.Start, m.End)
	case EventUnmap:
		return fmt.Sprintf("unmap [%#x, %#x)", m.Start, m.End)
	}
	return fmt.Sprintf("event %#02x", m.Event)
}

// pagefaultFlags spells PagefaultFlag* bits; a read fault is "read".
func pagefaultFlags(f uint64) string {
	if f == 0 {
		return "read"
	}
	var parts []string
	for _, fl := range []struct {
		bit  uint64
		name string
	}{{PagefaultFlagWrite, "write"}, {PagefaultFlagWP, "wp"}, {PagefaultFlagMinor, "minor"}} {
		if f&fl.bit != 0 {
			parts = append(parts, fl.name)
			f &^= fl.bit
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("%#x", f))
	}
	return strings.Join(parts, "|")
}

// readBatch bounds the messages one Read takes from the kernel, so that the
// buffer lives on the stack: 64 messages is 2 KiB.
const readBatch = 64

// Read reads the pending messages with one read(2), at most len(msgs) and
// at most 64, and decodes them into msgs. Pending faults come before
// events. With nothing pending it returns (0, err) with err wrapping
// unix.EAGAIN, if the descriptor is non-blocking; a blocking one waits.
// EINTR is retried.
//
// Reading an EventFork installs the child's descriptor (Msg.UFD) in this
// process, and reading any event lets the thread that raised it resume.
// A message with an event this package does not know is still counted, with
// only Event set, and Read returns an error along with n.
func (u *UFFD) Read(msgs []Msg) (n int, err error) {
	var buf [readBatch * MsgSize]byte
	want := min(len(msgs), readBatch)
	if want == 0 {
		return 0, nil
	}
	var got int
	for {
		got, err = unix.Read(u.Fd(), buf[:want*MsgSize])
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("uffd: read: %w", err)
	}
	if got%MsgSize != 0 {
		return 0, fmt.Errorf("uffd: read %d bytes, not a multiple of %d", got, MsgSize)
	}
	var errs []error
	for i := range got / MsgSize {
		var derr error
		msgs[i], derr = decode(buf[i*MsgSize : (i+1)*MsgSize])
		if derr != nil {
			errs = append(errs, derr)
		}
	}
	return got / MsgSize, errors.Join(errs...)
}

// Drain reads until nothing is pending or msgs is full, and returns the
// number of messages read. Running out of messages is not an error. The
// descriptor must be non-blocking, or Drain waits for more.
func (u *UFFD) Drain(msgs []Msg) (n int, err error) {
	for n < len(msgs) {
		k, err := u.Read(msgs[n:])
		n += k
		if errors.Is(err, unix.EAGAIN) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Poll waits until a message is pending or timeout passes, and reports
// whether one is. A negative timeout waits forever; zero does not wait.
// EINTR is retried with the time left.
func (u *UFFD) Poll(timeout time.Duration) (readable bool, err error) {
	if u.Fd() < 0 {
		// poll(2) ignores negative descriptors: it would sleep.
		return false, fmt.Errorf("uffd: poll: %w", unix.EBADF)
	}
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		fds := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, pollMillis(timeout))
		if err == unix.EINTR {
			if timeout > 0 {
				timeout = max(time.Until(deadline), 0)
			}
			continue
		}
		if err != nil {
			return false, fmt.Errorf("uffd: poll: %w", err)
		}
		if n == 0 {
			return false, nil
		}
		switch re := fds[0].Revents; {
		case re&unix.POLLNVAL != 0:
			return false, fmt.Errorf("uffd: poll: %w", unix.EBADF)
		case re&unix.POLLIN != 0:
			return true, nil
		case re&unix.POLLERR != 0:
			// A userfaultfd polls as an error until its handshake.
			return false, fmt.Errorf("uffd: poll: error condition (no UFFDIO_API yet?): %w", unix.EINVAL)
		}
		return false, nil
	}
}

// pollMillis converts a timeout for poll(2), rounding up so that a short
// positive timeout still waits.
func pollMillis(d time.Duration) int {
	switch {
	case d < 0:
		return -1
	case d >= math.MaxInt32*time.Millisecond:
		return math.MaxInt32
	}
	return int((d + time.Millisecond - 1) / time.Millisecond)
}
