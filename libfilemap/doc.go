// Package libfilemap is the home of libfilemap, filemap's C client library:
// include/filemap.h is its interface, src/ its sources, tests/ the C
// programs its tests run, and `make -C libfilemap` builds libfilemap.so,
// libfilemap.a and filemap.pc. The package's Go tests build it, run those
// programs as real client processes against real handlers, and check
// docs/protocol.md, the protocol it speaks, against package proto.
package libfilemap
