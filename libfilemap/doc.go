// Package libfilemap is the home of libfilemap, filemap's C client library:
// include/filemap.h is its interface, src/ its sources, tests/ the C
// programs its tests run, and `make -C libfilemap` builds libfilemap.so,
// libfilemap.a, filemap.pc and libfilemap-preload.so, the LD_PRELOAD shim
// built on it (preload/, docs/preload.md). The package's Go tests build
// them, run those programs as real client processes against real
// handlers, run real programs (coreutils, python3 with numpy, sqlite3)
// under the shim, and check docs/protocol.md, the protocol the library
// speaks, against package proto.
package libfilemap
