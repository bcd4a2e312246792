package filemap

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/filemap/filemap/server"
	"golang.org/x/sys/unix"
)

// envHugeClient makes the test binary a client that maps an object warm
// and counts its own page faults: "SOCKET PATH".
const envHugeClient = "FILEMAP_TEST_HUGE_CLIENT"

// A warm new mapping of a 64 MiB object whose 2 MiB extents were collapsed
// takes one fault per extent, O(32), where 4 KiB pages take one per 16
// (fault-around), O(1024). The faults are the client thread's own minor
// faults (getrusage RUSAGE_THREAD), counted in a process of its own.
func TestHugeWarmMappingFaults(t *testing.T) {
	if env := os.Getenv(envHugeClient); env != "" {
		sock, path, _ := strings.Cut(env, " ")
		fmt.Println("huge-client:", hugeClient(sock, path))
		return
	}
	const size = 64 << 20
	path := patternFile(t, size)
	for _, c := range []struct {
		name      string
		noHuge    bool
		maxFaults uint64 // or, for memfds, the fewest
	}{
		{"huge", false, 4 * size >> 21},
		{"memfd", true, size / ps / 16 / 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := startDaemon(t, server.Config{NoHuge: c.noHuge})
			b := d.s.Backing()
			if !c.noHuge && !b.Huge() {
				if os.Geteuid() != 0 {
					t.Skipf("huge caches need CAP_SYS_ADMIN for a private tmpfs; run as root (%s)", b.Reason())
				}
				t.Fatalf("root, and the daemon has no huge backing: %s", b.Reason())
			}
			a := startDriver(t, d.sock)
			a.open(path, "")
			a.OK("read 0 %d", size) // the cache is warm, and checked
			b.WaitCollapses()
			st := b.CollapseStats()
			faults := hugeWarmFaults(t, d.sock, path)
			t.Logf("%s: %d faults for a warm 64 MiB mapping; collapses %+v", c.name, faults, st)
			if c.noHuge {
				if faults < c.maxFaults || st.Collapsed != 0 {
					t.Fatalf("memfd cache: %d faults, %d collapses; the count no longer tells huge from small", faults, st.Collapsed)
				}
				return
			}
			if st.Collapsed < size>>21-2 {
				t.Errorf("%d of %d extents collapsed: %+v", st.Collapsed, size>>21, st)
			}
			if faults > c.maxFaults {
				t.Fatalf("%d faults for a warm 64 MiB mapping of collapsed extents, want O(32): at most %d", faults, c.maxFaults)
			}
		})
	}
}

// hugeWarmFaults runs a client process that maps path through the daemon
// at sock, loads one byte a page, and reports its faults.
func hugeWarmFaults(t *testing.T, sock, path string) uint64 {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHugeWarmMappingFaults$", "-test.count=1")
	cmd.Env = append(os.Environ(), envHugeClient+"="+sock+" "+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client: %v\n%s", err, out)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var faults uint64
		if _, err := fmt.Sscanf(sc.Text(), "huge-client: faults %d", &faults); err == nil {
			return faults
		}
	}
	t.Fatalf("client did not report its faults:\n%s", out)
	return 0
}

var hugeSink byte

// hugeClient maps path, touches every page from one locked thread and
// returns "faults N", or what went wrong; then checks every byte.
func hugeClient(sock, path string) string {
	m, err := Open(context.Background(), path, WithSocket(sock))
	if err != nil {
		return "error " + err.Error()
	}
	defer m.Close()
	mem := m.Bytes()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var r0, r1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_THREAD, &r0)
	for off := 0; off < len(mem); off += ps {
		hugeSink ^= mem[off]
	}
	unix.Getrusage(unix.RUSAGE_THREAD, &r1)
	want, err := os.ReadFile(path)
	if err != nil {
		return "error " + err.Error()
	}
	if !bytes.Equal(mem, want) {
		for off := range want {
			if mem[off] != want[off] {
				return fmt.Sprintf("error byte %d of the mapping differs from the file", off)
			}
		}
	}
	return fmt.Sprintf("faults %d", r1.Minflt-r0.Minflt)
}
