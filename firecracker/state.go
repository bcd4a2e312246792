package firecracker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

// vmState is what decides which bytes each page of a VM gets besides the
// memory file — which pages the balloon removed (zeros from then on), and
// the version of the memory file the VM was restored from (see vm.stale) —
// kept in a memfd that the handler maps shared and the keeper holds beside
// the VM's connection and userfaultfd. A handler that dies, or stops,
// leaves it there, up to the last bit set, and the next one maps the same
// pages: the guest's removed memory reads as zeros across any number of
// restarts, as anonymous memory that MADV_DONTNEED zapped does under the
// kernel's own fault path. Which pages are in the guest already is kept
// too, though no byte depends on it (a copy over a present page fails with
// EEXIST, and only wakes): it spares the next handler reading from the
// store pages the guest has.
//
// The loop's read buffer is in the memfd too. The kernel lets the balloon's
// madvise go on, and zap the range, as soon as the handler has read its
// REMOVE event: a handler killed after that read and before it set the
// range's bits would lose the event, and the next handler would fill the
// range from the memory file. With the buffer shared the event is in the
// memfd once read(2) returns, and the next handler applies the REMOVEs it
// finds there before it serves a fault (replayRemoves). Applying one again
// is harmless: a removed bit is never cleared. What is left is inside
// read(2): the kernel takes the event off the queue before it copies it
// out, so a handler killed while that copy waits for a buffer page to be
// swapped in loses it; the buffer is locked in memory, where
// RLIMIT_MEMLOCK allows.
type vmState struct {
	f         *os.File // the memfd
	mem       []byte   // all of it, mapped shared
	msgs      []byte   // the loop's read buffer: stateSlots messages
	removed   bitset   // by unit index: the balloon gave it back
	installed bitset   // by unit index: copied into the guest
	unit      uintptr  // the guest's page size
	nunits    int64    // units of the memory file, as it was restored from
	version   string   // of the memory file the VM was restored from
}

// stateSlots is how many messages the loop reads at a time.
const stateSlots = 256

// The memfd's layout, in the machine's byte order: the magic, the guest's
// page size, the number of units, the length of the memory file's
// version and the version, then at the next multiple of 64 bytes the read
// buffer, then the removed and installed bitsets, a word per 64 units.
const (
	stateMagic  = "filemap firecracker VM state v1\n"
	stateHeader = len(stateMagic) + 3*8
)

// stateLayout is where the read buffer and the bitsets start in the memfd
// of a VM of nunits units whose memory file's version is vlen bytes long,
// and the memfd's size.
func stateLayout(nunits int64, vlen int) (msgs, removed, installed, size int64) {
	msgs = (int64(stateHeader+vlen) + 63) &^ 63
	words := (nunits + 63) / 64
	removed = msgs + stateSlots*uffd.MsgSize
	installed = removed + 8*words
	size = installed + 8*words
	return msgs, removed, installed, size
}

// newVMState makes the state of a VM restored now: of nunits units of unit
// bytes, from the memory file at version; nothing removed, nothing
// installed.
func newVMState(unit uintptr, nunits int64, version string) (*vmState, error) {
	fd, err := unix.MemfdCreate("filemap:vm-state", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("the VM's state: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "vm-state")
	_, _, _, size := stateLayout(nunits, len(version))
	if err := unix.Ftruncate(fd, size); err != nil {
		f.Close()
		return nil, fmt.Errorf("the VM's state: size its memfd to %d bytes: %w", size, err)
	}
	// Its size is fixed: a mapping past the end would SIGBUS the handler.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return nil, fmt.Errorf("the VM's state: seal its memfd: %w", err)
	}
	st, err := mapVMState(f, unit, nunits, len(version), size)
	if err != nil {
		f.Close()
		return nil, err
	}
	h := st.mem[:stateHeader]
	copy(h, stateMagic)
	ne := binary.NativeEndian
	ne.PutUint64(h[len(stateMagic):], uint64(unit))
	ne.PutUint64(h[len(stateMagic)+8:], uint64(nunits))
	ne.PutUint64(h[len(stateMagic)+16:], uint64(len(version)))
	copy(st.mem[stateHeader:], version)
	st.version = version
	return st, nil
}

// openVMState maps the state a previous handler kept, from its memfd f (a
// copy of it: f stays the caller's). A memfd that is not such a state is
// refused.
func openVMState(f *os.File) (*vmState, error) {
	var sb unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &sb); err != nil {
		return nil, fmt.Errorf("the kept VM state: fstat: %w", err)
	}
	var h [stateHeader]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return nil, fmt.Errorf("the kept VM state: read its header: %w", err)
	}
	ne := binary.NativeEndian
	unit, nunits, vlen := ne.Uint64(h[len(stateMagic):]), ne.Uint64(h[len(stateMagic)+8:]), ne.Uint64(h[len(stateMagic)+16:])
	switch {
	case !bytes.Equal(h[:len(stateMagic)], []byte(stateMagic)):
		return nil, errors.New("the kept VM state has no header this handler knows")
	case unit != PageSize && unit != HugePageSize:
		return nil, fmt.Errorf("the kept VM state is of pages of %d bytes", unit)
	case nunits > uint64(sb.Size)*8 || vlen > uint64(sb.Size):
		return nil, fmt.Errorf("the kept VM state of %d units, version of %d bytes, is only %d bytes", nunits, vlen, sb.Size)
	}
	if _, _, _, size := stateLayout(int64(nunits), int(vlen)); sb.Size != size {
		return nil, fmt.Errorf("the kept VM state is %d bytes; want %d", sb.Size, size)
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("the kept VM state: dup: %w", err)
	}
	mine := os.NewFile(uintptr(fd), "vm-state")
	st, err := mapVMState(mine, uintptr(unit), int64(nunits), int(vlen), sb.Size)
	if err != nil {
		mine.Close()
		return nil, err
	}
	st.version = string(st.mem[stateHeader : stateHeader+int(vlen)])
	return st, nil
}

// mapVMState maps memfd f, of size bytes, and finds its parts.
func mapVMState(f *os.File, unit uintptr, nunits int64, vlen int, size int64) (*vmState, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("the VM's state: map %d bytes: %w", size, err)
	}
	msgs, removed, installed, _ := stateLayout(nunits, vlen)
	words := (nunits + 63) / 64
	st := &vmState{f: f, mem: mem, msgs: mem[msgs:removed], unit: unit, nunits: nunits,
		removed: sharedBitset(mem[removed:installed], words), installed: sharedBitset(mem[installed:], words)}
	unix.Mlock(st.msgs) // best effort: see vmState
	return st, nil
}

// sharedBitset is a bitset of words words in b, memory the bitset does not
// own, aligned to 8 bytes.
func sharedBitset(b []byte, words int64) bitset {
	if words == 0 {
		return nil
	}
	return unsafe.Slice((*atomic.Uint64)(unsafe.Pointer(&b[0])), words)
}

// read reads the pending messages of userfaultfd fd into the buffer until
// none is left or the buffer is full, and returns how many it read. A
// read that fails after some messages returns them with its error.
func (st *vmState) read(fd int) (int, error) {
	n := 0
	for n < stateSlots {
		k, err := unix.Read(fd, st.msgs[n*uffd.MsgSize:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return n, nil
		case err != nil:
			return n, fmt.Errorf("read the userfaultfd: %w", err)
		case k <= 0 || k%uffd.MsgSize != 0:
			return n, fmt.Errorf("read the userfaultfd: %d bytes, not a multiple of %d", k, uffd.MsgSize)
		}
		n += k / uffd.MsgSize
	}
	return n, nil
}

// msg decodes message i of the buffer.
func (st *vmState) msg(i int) (uffd.Msg, error) {
	return uffd.DecodeMsg(st.msgs[i*uffd.MsgSize : (i+1)*uffd.MsgSize])
}

// close lets go of the handler's mapping and descriptor; the keeper's copy,
// if any, keeps the state.
func (st *vmState) close() {
	unix.Munmap(st.mem)
	st.f.Close()
}
