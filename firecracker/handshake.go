package firecracker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// GuestRegion is one region of guest memory as Firecracker describes it
// (GuestRegionUffdMapping): Size bytes of the VMM's address space from
// Base hold the bytes of the memory file from Offset, in pages of PageSize.
type GuestRegion struct {
	Base     uintptr // base_host_virt_addr: the region's first byte in the VMM
	Size     uintptr // size, in bytes
	Offset   int64   // offset: where the region's bytes start in the memory file
	PageSize uintptr // page_size (or page_size_kib): 4096, or 2 MiB for hugetlbfs
}

// The page sizes guest memory comes in: the base page, and a 2 MiB
// hugetlbfs page (Firecracker's huge_pages "2M").
const (
	PageSize     = 4096
	HugePageSize = 2 << 20
)

// maxRegions bounds the regions of one handshake: Firecracker sends one per
// guest memory region, a handful, more with memory hotplug.
const maxRegions = 4096

// wireRegion is a region as it is on the wire. Pointers tell a missing
// field from a zero one. Fields this package does not know are ignored, as
// a newer Firecracker may add some.
type wireRegion struct {
	Base        *uint64 `json:"base_host_virt_addr"`
	Size        *uint64 `json:"size"`
	Offset      *uint64 `json:"offset"`
	PageSize    *uint64 `json:"page_size"`     // v1.12 and later
	PageSizeKib *uint64 `json:"page_size_kib"` // v1.7 to v1.11, and beside page_size since: BYTES, despite its name
	GuestMemfd  *bool   `json:"is_guest_memfd"`
}

// ParseRegions decodes and checks the JSON of a handshake against a memory
// file of fileSize bytes: a non-empty array of regions whose page size is
// 4096 or 2 MiB and the same for all, whose address, size and offset are
// multiples of it, which do not overlap, neither in the VMM's address space
// nor in the file, and which lie inside the file. A region with neither
// page_size nor page_size_kib (Firecracker before v1.7) has 4 KiB pages.
// Errors name the region, by index, and the field.
func ParseRegions(payload []byte, fileSize int64) ([]GuestRegion, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(payload, &raw); err != nil {
		return nil, fmt.Errorf("the handshake is not a JSON array of regions: %w", err)
	}
	if len(raw) == 0 {
		return nil, errors.New("the handshake has no regions")
	}
	if len(raw) > maxRegions {
		return nil, fmt.Errorf("the handshake has %d regions, more than %d", len(raw), maxRegions)
	}
	rs := make([]GuestRegion, len(raw))
	for i, m := range raw {
		r, err := parseRegion(m, fileSize)
		if err != nil {
			return nil, fmt.Errorf("region %d: %w", i, err)
		}
		if i > 0 && r.PageSize != rs[0].PageSize {
			return nil, fmt.Errorf("region %d: page_size %d differs from region 0's %d: all regions of a VM have one page size",
				i, r.PageSize, rs[0].PageSize)
		}
		rs[i] = r
	}
	if err := checkOverlaps(rs); err != nil {
		return nil, err
	}
	return rs, nil
}

func parseRegion(m json.RawMessage, fileSize int64) (GuestRegion, error) {
	var w wireRegion
	if err := json.Unmarshal(m, &w); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return GuestRegion{}, fmt.Errorf("field %s: want %s, got JSON %s", te.Field, te.Type, te.Value)
		}
		return GuestRegion{}, fmt.Errorf("not a region object: %w", err)
	}
	for _, f := range []struct {
		v    *uint64
		name string
	}{{w.Base, "base_host_virt_addr"}, {w.Size, "size"}, {w.Offset, "offset"}} {
		if f.v == nil {
			return GuestRegion{}, fmt.Errorf("field %s is missing", f.name)
		}
	}
	if w.GuestMemfd != nil && *w.GuestMemfd {
		return GuestRegion{}, errors.New("is_guest_memfd: guest_memfd regions (Firecracker's secret-hiding branch) are not supported")
	}
	ps := uint64(PageSize)
	switch {
	case w.PageSize != nil && w.PageSizeKib != nil && *w.PageSize != *w.PageSizeKib:
		return GuestRegion{}, fmt.Errorf("page_size %d and page_size_kib %d disagree (page_size_kib holds bytes too)", *w.PageSize, *w.PageSizeKib)
	case w.PageSize != nil:
		ps = *w.PageSize
	case w.PageSizeKib != nil:
		ps = *w.PageSizeKib
	}
	field := "page_size"
	if w.PageSize == nil && w.PageSizeKib != nil {
		field = "page_size_kib"
	}
	if ps == 0 || ps&(ps-1) != 0 {
		return GuestRegion{}, fmt.Errorf("%s %d is not a power of two", field, ps)
	}
	if ps != PageSize && ps != HugePageSize {
		return GuestRegion{}, fmt.Errorf("%s %d: want %d, or %d for 2 MiB hugetlbfs pages", field, ps, PageSize, HugePageSize)
	}
	base, size, off := *w.Base, *w.Size, *w.Offset
	switch {
	case size == 0:
		return GuestRegion{}, errors.New("size is 0")
	case base%ps != 0:
		return GuestRegion{}, fmt.Errorf("base_host_virt_addr %#x is not a multiple of the page size %d", base, ps)
	case size%ps != 0:
		return GuestRegion{}, fmt.Errorf("size %d is not a multiple of the page size %d", size, ps)
	case off%ps != 0:
		return GuestRegion{}, fmt.Errorf("offset %d is not a multiple of the page size %d", off, ps)
	case base+size < base || base+size > 1<<63:
		return GuestRegion{}, fmt.Errorf("base_host_virt_addr %#x + size %d is not an address", base, size)
	case off > uint64(fileSize) || size > uint64(fileSize)-off:
		return GuestRegion{}, fmt.Errorf("bytes [%d, %d) of the memory file (offset + size) lie beyond its end (%d bytes)",
			off, off+size, fileSize)
	}
	return GuestRegion{Base: uintptr(base), Size: uintptr(size), Offset: int64(off), PageSize: uintptr(ps)}, nil
}

// checkOverlaps refuses two regions that share an address of the VMM or a
// byte of the memory file: a fault there would have two answers.
func checkOverlaps(rs []GuestRegion) error {
	idx := make([]int, len(rs))
	for i := range idx {
		idx[i] = i
	}
	for _, by := range []struct {
		what       string
		start, end func(GuestRegion) uint64
	}{
		{"the VMM's address space", func(r GuestRegion) uint64 { return uint64(r.Base) }, func(r GuestRegion) uint64 { return uint64(r.Base + r.Size) }},
		{"the memory file", func(r GuestRegion) uint64 { return uint64(r.Offset) }, func(r GuestRegion) uint64 { return uint64(r.Offset) + uint64(r.Size) }},
	} {
		slices.SortFunc(idx, func(a, b int) int {
			return cmpU64(by.start(rs[a]), by.start(rs[b]))
		})
		for k := 1; k < len(idx); k++ {
			a, b := rs[idx[k-1]], rs[idx[k]]
			if by.start(b) < by.end(a) {
				i, j := min(idx[k-1], idx[k]), max(idx[k-1], idx[k])
				return fmt.Errorf("regions %d and %d overlap in %s: [%#x, %#x) and [%#x, %#x)", i, j, by.what,
					by.start(rs[i]), by.end(rs[i]), by.start(rs[j]), by.end(rs[j]))
			}
		}
	}
	return nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Handshake limits. Firecracker sends its JSON and the uffd in one sendmsg
// and keeps the socket open, so the end of the JSON is where it parses, not
// an EOF.
const (
	maxPayload = 1 << 20 // a JSON larger than this is refused
	maxFds     = 8       // descriptors taken from one message
	// fdRetries is how many messages without a descriptor, or waits of
	// retryWait for one, a handshake survives (Firecracker's example
	// handler: "Didn't receive UFFD over socket ... Retrying", 5 times
	// 100 ms apart); retryWait also bounds the wait for the rest of a
	// JSON larger than one read.
	fdRetries = 5
	retryWait = 100 * time.Millisecond
)

// errNoFd reports a handshake whose messages carried no userfaultfd.
var errNoFd = errors.New("no userfaultfd received")

// recvHandshake reads the handshake from a VMM: the JSON of the regions and
// the userfaultfd that came with it, which the caller owns. A message that
// carries bytes but no descriptor is set aside and the read retried, as
// Firecracker's own handler does: the JSON is the one that arrives with the
// descriptor (the kernel hands SCM_RIGHTS over with the first byte of the
// sendmsg that sent them), continued by later reads if it is longer than
// one. (Bytes still unread when the descriptor's message arrives are
// handed over with it, glued in front: such a handshake is malformed.) Extra descriptors (a fork of Firecracker sends a memfd after the
// uffd) are closed.
func recvHandshake(c *net.UnixConn, timeout time.Duration, log *slog.Logger) (payload []byte, uffdFd int, err error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(maxFds*4))
	var body []byte
	retries := 0 // messages without a descriptor, and waits of retryWait after one
	uffd := -1
	defer func() {
		if err != nil && uffd >= 0 {
			unix.Close(uffd)
			uffdFd = -1
		}
	}()
	for {
		wait := deadline
		if uffd >= 0 || retries > 0 {
			wait = minTime(deadline, time.Now().Add(retryWait))
		}
		c.SetReadDeadline(wait)
		n, oobn, flags, _, rerr := c.ReadMsgUnix(buf, oob)
		fds, perr := parseRights(oob[:oobn])
		switch {
		case flags&unix.MSG_CTRUNC != 0:
			closeFds(fds)
			return nil, uffd, fmt.Errorf("the handshake's control message was truncated: more than %d descriptors", maxFds)
		case perr != nil:
			closeFds(fds)
			return nil, uffd, fmt.Errorf("the handshake's control message: %w", perr)
		case len(fds) > 0 && uffd >= 0:
			closeFds(fds)
			return nil, uffd, errors.New("a second message with descriptors before the JSON was complete")
		case len(fds) > 0:
			fd, err := pickUffd(fds)
			if err != nil {
				return nil, -1, err
			}
			uffd, body = fd, append(body[:0], buf[:n]...)
		case n > 0 && uffd >= 0:
			body = append(body, buf[:n]...) // the rest of a long JSON
		case n > 0:
			retries++
			log.Warn("firecracker: a handshake message without a descriptor; waiting for the one with the userfaultfd",
				"bytes", n, "data", clip(buf[:n]), "try", retries)
			if retries > fdRetries {
				return nil, -1, fmt.Errorf("%w: %d messages without SCM_RIGHTS (the last: %q)", errNoFd, retries, clip(buf[:n]))
			}
			continue
		}
		if len(body) > maxPayload {
			return nil, uffd, fmt.Errorf("the handshake's JSON is longer than %d bytes", maxPayload)
		}
		if uffd >= 0 && rerr == nil {
			switch err := jsonState(body); {
			case err == nil:
				c.SetReadDeadline(time.Time{})
				return body, uffd, nil
			case !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF):
				return nil, uffd, fmt.Errorf("malformed JSON in the handshake: %w (received %q)", err, clip(body))
			}
			continue // the start of a JSON: wait for the rest
		}
		if rerr == nil {
			continue
		}
		var ne net.Error
		timedOut := errors.As(rerr, &ne) && ne.Timeout()
		switch {
		case timedOut && uffd >= 0:
			return nil, uffd, fmt.Errorf("malformed JSON in the handshake: it ends after %d bytes (%q)", len(body), clip(body))
		case timedOut && retries > 0 && time.Now().Before(deadline):
			retries++
			if retries > fdRetries {
				return nil, -1, fmt.Errorf("%w: messages without SCM_RIGHTS, and none with it after %d tries %v apart",
					errNoFd, fdRetries, retryWait)
			}
		case timedOut:
			return nil, -1, fmt.Errorf("no handshake within %v", timeout)
		case errors.Is(rerr, io.EOF) && uffd >= 0:
			return nil, uffd, fmt.Errorf("malformed JSON in the handshake: the connection closed after %d bytes (%q)", len(body), clip(body))
		case errors.Is(rerr, io.EOF):
			return nil, -1, fmt.Errorf("%w: the VMM closed the connection (after %d messages without SCM_RIGHTS)", errNoFd, retries)
		default:
			return nil, uffd, fmt.Errorf("reading the handshake: %w", rerr)
		}
	}
}

// jsonState is nil if b holds one complete JSON value, an error wrapping
// io.ErrUnexpectedEOF or io.EOF if it may be the start of one, and the
// syntax error otherwise.
func jsonState(b []byte) error {
	if json.Valid(b) {
		return nil
	}
	d := json.NewDecoder(bytes.NewReader(b))
	var v json.RawMessage
	if err := d.Decode(&v); err != nil {
		return err
	}
	// One value, then something else.
	return fmt.Errorf("data after the JSON value at byte %d", d.InputOffset())
}

// parseRights returns the descriptors of the SCM_RIGHTS messages in oob.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			closeFds(fds)
			return nil, err
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// pickUffd keeps the first descriptor that is a userfaultfd and closes the
// others: the ioctls that follow must never land on another kind of file.
func pickUffd(fds []int) (int, error) {
	var kinds []string
	found := -1
	for i, fd := range fds {
		unix.CloseOnExec(fd)
		link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		if err != nil {
			link = err.Error()
		}
		kinds = append(kinds, link)
		if found < 0 && link == "anon_inode:[userfaultfd]" {
			found = i
		}
	}
	for i, fd := range fds {
		if i != found {
			unix.Close(fd)
		}
	}
	if found < 0 {
		return -1, fmt.Errorf("%w: the %d descriptors of the handshake are %q", errNoFd, len(fds), kinds)
	}
	return fds[found], nil
}

func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// clip shortens a payload for a log line.
func clip(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
