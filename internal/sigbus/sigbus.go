// Package sigbus turns the SIGBUS of a page that could not be read — the
// user-space VM_FAULT_SIGBUS — into a value a Go program can act on.
package sigbus

import (
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
