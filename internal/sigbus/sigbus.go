// Package sigbus turns the SIGBUS of a page that could not be read — the
// user-space VM_FAULT_SIGBUS — into a value a Go program can act on.
package sigbus

import (
	"fmt"
	"os"
	"runtime/debug"
	"unsafe"
)

// Catch runs f. If f faults on an address inside b, Catch returns that
// address's offset in b and true. Any other panic, a fault elsewhere among
// them, goes on as if Catch were not there.
func Catch(b []byte, f func()) (off int64, faulted bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		e, ok := r.(interface{ Addr() uintptr })
		base := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
		if !ok || e.Addr() < base || e.Addr()-base >= uintptr(len(b)) {
			panic(r)
		}
		off, faulted = int64(e.Addr()-base), true
	}()
	f()
	return 0, false
}

// Error is a memory fault Check caught: the page at Offset could not be read.
type Error struct {
	Offset int64 // the byte the access faulted on, from the start of the slice
}

func (e *Error) Error() string {
	return fmt.Sprintf("memory fault reading offset %d (the page at %d could not be read)",
		e.Offset, e.Offset&^int64(os.Getpagesize()-1))
}

// Check is Catch with the fault as an *Error.
func Check(b []byte, f func()) error {
	if off, faulted := Catch(b, f); faulted {
		return &Error{Offset: off}
	}
	return nil
}
