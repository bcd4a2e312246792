package filemap

// The soak: many client processes, each reading a shared object and a
// private one, at random and sequentially, every byte checked, against one
// daemon with a cache budget well under the working set.
//
// The short form runs by default (16 clients × 4 threads for 10 s, what two
// CPUs running the race detector carry in CI); FILEMAP_SOAK=60s runs the
// full one, 64 clients × 4 threads for that long (FILEMAP_SOAK_CLIENTS
// changes the number of clients).
//
// The daemon runs in a process of its own, so that its RSS is its own: in
// the test process it would include the harness, the drivers' pipes and
// whatever the tests before left on the heap.

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/server"
)

const (
	envSoak        = "FILEMAP_SOAK"         // the full form's duration, e.g. 60s
	envSoakClients = "FILEMAP_SOAK_CLIENTS" // clients of the full form; 64 if unset
	envSoakBudget  = "FILEMAP_TEST_SOAK_BUDGET"
	roleSoakServe  = "soak-serve"
)

// A daemon for the soak, with a cache budget: the test binary run again.
// TestMain is not this file's to change, and init runs before it.
func init() {
	if os.Getenv(envRole) == roleSoakServe {
		os.Exit(runSoakDaemon())
	}
}

func runSoakDaemon() int {
	budget, err := strconv.ParseInt(os.Getenv(envSoakBudget), 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak daemon:", err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := server.New(server.Config{CacheBytes: budget, Log: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak daemon:", err)
		return 1
	}
	l, err := server.Listen(os.Getenv(envSocket), 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak daemon:", err)
		return 1
	}
	go s.Serve(l)
	fmt.Println("ready")
	// Commands on stdin; the test is gone when its end closes.
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "collect" {
			// What the daemon keeps when idle, once its garbage is
			// collected and returned to the kernel. Two collections:
			// sync.Pool keeps what it held for one more.
			runtime.GC()
			debug.FreeOSMemory()
			fmt.Println("collected", goMemory())
		}
	}
	return 0
}

// goMemory is the memory the Go runtime holds from the kernel for this
// process: everything it mapped, less what it gave back. Unlike RSS, it
// leaves out the race detector's shadow memory.
func goMemory() int64 {
	ms := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(ms)
	return int64(ms[0].Value.Uint64() - ms[1].Value.Uint64())
}

// procStatus reads the fields of /proc/PID/status that are sizes in kB,
// in bytes.
func procStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	m := make(map[string]int64)
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if f := strings.Fields(v); ok && len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			m[k] = n << 10
		}
	}
	return m, nil
}

func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the soak's short form takes 10 s")
	}
	const budget = 64 << 20
	clients, threads, d := 16, 4, 10*time.Second
	sharedSize, privateSize := int64(128<<20), int64(8<<20)
	if v := os.Getenv(envSoak); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("%s=%q: %v", envSoak, v, err)
		}
		clients = 64
		if v := os.Getenv(envSoakClients); v != "" {
			if clients, err = strconv.Atoi(v); err != nil {
				t.Fatalf("%s=%q: %v", envSoakClients, v, err)
			}
		}
	}

	// The daemon.
	sock := filepath.Join(t.TempDir(), "soak.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"="+roleSoakServe, envSocket+"="+sock, envSoakBudget+"="+strconv.Itoa(budget))
	daemonErr := new(syncBuffer)
	cmd.Stderr = daemonErr
	lifeline, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lifeline.Close()
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("daemon stderr:\n%s", daemonErr.String())
		}
	})
	daemonOut := bufio.NewReader(out)
	if l, _ := daemonOut.ReadString('\n'); l != "ready\n" {
		t.Fatalf("the soak daemon did not start: %q; stderr:\n%s", l, daemonErr.String())
	}
	collect := func() int64 {
		t.Helper()
		fmt.Fprintln(lifeline, "collect")
		var n int64
		if l, _ := daemonOut.ReadString('\n'); !strings.HasPrefix(l, "collected ") {
			t.Fatalf("the soak daemon did not collect: %q; stderr:\n%s", l, daemonErr.String())
		} else {
			n, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(l, "collected ")), 10, 64)
		}
		return n
	}
	goBefore := collect()
	before, err := procStatus(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}

	// The objects: one shared by all, one private to each client, each
	// with bytes of its own.
	shared := seededPatternFile(t, sharedSize, 1)
	drivers := make([]*driver, clients)
	for i := range drivers {
		private := seededPatternFile(t, privateSize, uint64(i+2))
		drivers[i] = startDriver(t, sock)
		drivers[i].Send("soak %s %s %d %d", shared, private, threads, d.Milliseconds())
	}
	t.Logf("%d clients × %d threads for %v: a %d MiB object shared, %d MiB private each, cache budget %d MiB",
		clients, threads, d, sharedSize>>20, privateSize>>20, budget>>20)

	var reads, checked int64
	var worst time.Duration
	var hist [latencyBuckets]uint64
	for i, dr := range drivers {
		r, ok := dr.Reply(d + 2*time.Minute)
		if !ok {
			t.Fatalf("client %d: no answer; stderr:\n%s", i, dr.Stderr.String())
		}
		var n, b, w int64
		var hs string
		if _, err := fmt.Sscanf(r, "ok %d %d %d %s", &n, &b, &w, &hs); err != nil {
			t.Fatalf("client %d: %s", i, r) // a mismatch, a SIGBUS or an error
		}
		reads, checked, worst = reads+n, checked+b, max(worst, time.Duration(w))
		for j, c := range strings.Split(hs, ",") {
			v, _ := strconv.ParseUint(c, 10, 64)
			hist[j] += v
		}
	}
	st, err := Stat(context.Background(), WithSocket(sock))
	if err != nil {
		t.Fatal(err)
	}
	atEnd, err := procStatus(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	// Once the clients are gone and the daemon's garbage is collected,
	// what it keeps: a leak shows here. (The drivers close their mappings
	// when they answer; their sessions end just after.)
	for _, dr := range drivers {
		dr.CloseInput()
	}
	testutil.WaitFor(t, "the clients' sessions to end", func() bool {
		st, err := Stat(context.Background(), WithSocket(sock))
		return err == nil && st.Clients == 0 && st.Regions == 0 // Clients leaves out this Stat's own connection
	})
	goAfter := collect()
	after, err := procStatus(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}

	// The report.
	var b strings.Builder
	fmt.Fprintf(&b, "soak: %d clients × %d threads, %v: %d page reads, %d MiB checked, 0 mismatches\n",
		clients, threads, d, reads, checked>>20)
	// Duplicates (a fault message for a page whose fault is being resolved)
	// count as minor faults but have no service time of their own.
	dups := st.MinorFaults - st.FaultLatency["minor"].Count - st.FaultLatency["marker"].Count
	fmt.Fprintf(&b, "  faults served by the daemon: %d (%d major, %d minor, of which %d duplicate messages); %d store reads; %d evictions, %d refaults; %d pages poisoned\n",
		st.MajorFaults+st.MinorFaults, st.MajorFaults, st.MinorFaults, dups, st.StoreReads, st.Evictions, st.Refaults, st.SIGBUS)
	for _, k := range []string{"major", "minor", "marker"} {
		l := st.FaultLatency[k]
		fmt.Fprintf(&b, "  daemon fault service time, %s: %d faults, p50 %.0f µs, p99 %.0f µs\n", k, l.Count, l.P50Us, l.P99Us)
	}
	fmt.Fprintf(&b, "  page access time seen by the clients (cache hits included): p50 ≤ %v, p99 ≤ %v, p99.99 ≤ %v, max %v\n",
		bucketQuantile(hist[:], 0.5), bucketQuantile(hist[:], 0.99), bucketQuantile(hist[:], 0.9999), worst.Round(time.Microsecond))
	fmt.Fprintf(&b, "  daemon RSS: %d MiB before; %d MiB at the end, %d MiB at most; %d MiB once idle and collected (anon %d → %d → %d MiB, shmem %d → %d MiB)\n",
		before["VmRSS"]>>20, atEnd["VmRSS"]>>20, atEnd["VmHWM"]>>20, after["VmRSS"]>>20,
		before["RssAnon"]>>20, atEnd["RssAnon"]>>20, after["RssAnon"]>>20, before["RssShmem"]>>20, atEnd["RssShmem"]>>20)
	fmt.Fprintf(&b, "  daemon's Go runtime memory (no race detector shadow): %d MiB before, %d MiB once idle and collected\n", goBefore>>20, goAfter>>20)
	fmt.Fprintf(&b, "  cache: %d MiB resident of a %d MiB budget (shared memory, not in the daemon's RSS)", st.CacheBytes>>20, st.CacheBudget>>20)
	t.Log(b.String())

	if reads == 0 {
		t.Fatal("no page was read")
	}
	if st.SIGBUS != 0 {
		t.Errorf("%d pages poisoned: the store never fails here", st.SIGBUS)
	}
	// What the daemon keeps must not grow by more than the budget: RSS, or
	// under the race detector, whose shadow memory swamps RSS, the memory
	// the Go runtime holds.
	if growth := after["VmRSS"] - before["VmRSS"]; !raceEnabled && growth > budget*11/10 {
		t.Errorf("the idle daemon's RSS grew by %d MiB, more than the cache budget %d MiB + 10%%", growth>>20, budget>>20)
	}
	if growth := goAfter - goBefore; growth > budget*11/10 {
		t.Errorf("the idle daemon's Go runtime memory grew by %d MiB, more than the cache budget %d MiB + 10%%", growth>>20, budget>>20)
	}
	// Nor under load: the peak counts, since that is what the machine must
	// have. (The read buffers of the fills in flight are the most of it;
	// fault.Config.ReadBuffers bounds them.)
	if growth := atEnd["VmHWM"] - before["VmRSS"]; !raceEnabled && growth > budget*11/10 {
		t.Errorf("the daemon's RSS peaked %d MiB above its start, more than the cache budget %d MiB + 10%%", growth>>20, budget>>20)
	}
}

// bucketQuantile is the upper bound of the latencyBuckets bucket where the
// q quantile of hist falls.
func bucketQuantile(hist []uint64, q float64) time.Duration {
	var total uint64
	for _, c := range hist {
		total += c
	}
	want := uint64(q * float64(total))
	var cum uint64
	for i, c := range hist {
		cum += c
		if cum > want {
			return time.Duration(1) << i
		}
	}
	return time.Duration(1) << (len(hist) - 1)
}
