package firecracker

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/testutil"
)

// BenchmarkRestore restores a guest from a memory image (1 GiB, or
// $FILEMAP_BENCH_FC_SIZE bytes) whose first touches are a scattered 10 %
// working set — clusters of 1–8 pages at random places, in a fixed random
// order — and measures, in one run:
//
//   - the time until the working set is resident, on demand (each touch a
//     fault) and replayed from a record of a previous restore (the guest
//     touching from the moment it is restored, as a resumed VM does), and
//     their ratio (restore-speedup);
//   - the latency of a fault served from the cache in copy mode, as the
//     guest sees it (p50, p99) and as the handler does, with the haltpoll
//     setting of this machine and, if it can be changed, with 200 µs;
//   - on demand with read-around off, and with copy-around of 64 KiB, to
//     choose their defaults.
//
// Every run starts with a cold cache (a new handler); the memory file is
// read with O_DIRECT, so the kernel's page cache does not help. Run it
// once: go test -run '^$' -bench Restore -benchtime 1x ./firecracker
func BenchmarkRestore(b *testing.B) {
	size := int64(1 << 30)
	if s := os.Getenv("FILEMAP_BENCH_FC_SIZE"); s != "" {
		n, err := parseBytes(s)
		if err != nil {
			b.Fatalf("FILEMAP_BENCH_FC_SIZE: %v", err)
		}
		size = n &^ (PageSize - 1)
	}
	dir := b.TempDir()
	mem := filepath.Join(dir, "mem")
	pattern.WriteFile(b, mem, size)
	if f, err := os.Open(mem); err == nil {
		f.Sync()
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
	}
	ws := workingSet(42, size/PageSize, 0.10)
	touch := filepath.Join(dir, "touch")
	writePages(b, touch, ws)
	rec := filepath.Join(dir, "ws")
	spans := []span{{0, size}}

	for range b.N {
		record := restoreRun(b, mem, spans, touch, Config{Record: rec})
		demand := restoreRun(b, mem, spans, touch, Config{})
		replay := restoreRun(b, mem, spans, touch, Config{Prefetch: rec})
		b.Logf("working set: %d pages (%.0f MiB) of %d MiB", len(ws), float64(len(ws))*PageSize/(1<<20), size>>20)
		b.Logf("record run:  %v", record)
		b.Logf("on demand:   %v", demand)
		b.Logf("replayed:    %v", replay)
		speedup := float64(demand.elapsed) / float64(replay.elapsed)
		b.Logf("restore speedup (on demand / replayed): %.1fx", speedup)
		b.ReportMetric(demand.elapsed.Seconds(), "on-demand-s")
		b.ReportMetric(replay.elapsed.Seconds(), "replayed-s")
		b.ReportMetric(speedup, "restore-speedup")

		noRA := restoreRun(b, mem, spans, touch, Config{ReadaheadPages: 1})
		ra32 := restoreRun(b, mem, spans, touch, Config{ReadaheadPages: 32})
		around := restoreRun(b, mem, spans, touch, Config{CopyAround: 16})
		b.Logf("read-around off:        %v", noRA)
		b.Logf("read-around 128 KiB:    %v", ra32)
		b.Logf("copy-around 64 KiB:     %v", around)
		b.ReportMetric(noRA.elapsed.Seconds(), "no-readaround-s")
		b.ReportMetric(ra32.elapsed.Seconds(), "readaround128k-s")
		b.ReportMetric(around.elapsed.Seconds(), "copyaround64k-s")

		warm := warmRun(b, mem, spans, touch)
		b.Logf("from the cache, haltpoll %s: %v", haltPoll(), warm)
		b.ReportMetric(float64(warm.p50.Nanoseconds())/1e3, "cached-fault-p50-us")
		b.ReportMetric(warm.handlerP50, "cached-handler-p50-us")
		if restore, err := setHaltPoll(200000); err != nil {
			b.Logf("haltpoll unchanged: %v", err)
		} else {
			polled := warmRun(b, mem, spans, touch)
			restore()
			b.Logf("from the cache, haltpoll 200000 ns: %v", polled)
			b.ReportMetric(float64(polled.p50.Nanoseconds())/1e3, "cached-fault-p50-haltpoll-us")
			b.ReportMetric(polled.handlerP50, "cached-handler-p50-haltpoll-us")
		}
	}
}

// runResult is what one restore measured.
type runResult struct {
	elapsed    time.Duration // until the last page of the working set was read
	p50, p99   time.Duration // of one touch, as the guest saw it
	handlerP50 float64       // µs from a fault message to its copy, as the handler saw it
	faults     uint64
	prefetched uint64
	late       uint64
	around     uint64 // pages copied in beside the faulting ones
	storeReads uint64
	storeMiB   float64
}

func (r runResult) String() string {
	s := fmt.Sprintf("%v (touch p50 %v p99 %v), %d faults, %d store reads (%.0f MiB)",
		r.elapsed.Round(time.Millisecond), r.p50, r.p99, r.faults, r.storeReads, r.storeMiB)
	if r.around > 0 {
		s += fmt.Sprintf(", %d pages copied around", r.around)
	}
	if r.prefetched > 0 {
		s += fmt.Sprintf(", %d prefetched, %d late", r.prefetched, r.late)
	}
	if r.handlerP50 > 0 {
		s += fmt.Sprintf(", handler p50 %.1f µs", r.handlerP50)
	}
	return s
}

// restoreRun restores a guest into a fresh handler and has it touch the
// pages listed in touch.
func restoreRun(b *testing.B, mem string, spans []span, touch string, cfg Config) runResult {
	ts := startServer(b, mem, cfg)
	defer ts.Close()
	c := startClient(b, ts.sock, mem, clientOpts{spans: spans})
	r := parseTouch(b, c.OK("touch %s", touch))
	c.close()
	testutil.WaitFor(b, "the VM to be gone", func() bool { return ts.Stats().VMs == 0 })
	st := ts.Stats()
	r.faults, r.prefetched, r.late, r.around = st.Faults, st.Prefetched, st.PrefetchLate, st.CopyAround
	r.storeReads, r.storeMiB = st.StoreReads, float64(st.StoreBytes)/(1<<20)
	return r
}

// warmRun fills a handler's cache with the working set through one guest,
// then measures a second guest's touches of it: every one a fault served
// from the cache by a copy.
func warmRun(b *testing.B, mem string, spans []span, touch string) runResult {
	ts := startServer(b, mem, Config{})
	defer ts.Close()
	c := startClient(b, ts.sock, mem, clientOpts{spans: spans})
	c.OK("touch %s", touch)
	c.close()
	before := ts.Metrics().Latencies()["minor"]
	c2 := startClient(b, ts.sock, mem, clientOpts{spans: spans})
	r := parseTouch(b, c2.OK("touch %s", touch))
	c2.close()
	after := ts.Metrics().Latencies()["minor"]
	if after.Count > before.Count {
		r.handlerP50 = after.P50Us // dominated by the second guest's faults
	}
	r.faults = ts.Stats().Faults
	return r
}

func parseTouch(b testing.TB, s string) runResult {
	f := strings.Fields(s)
	if len(f) != 4 {
		b.Fatalf("touch answered %q", s)
	}
	n := make([]int64, 3)
	for i := range n {
		n[i], _ = strconv.ParseInt(f[i], 10, 64)
	}
	return runResult{elapsed: time.Duration(n[0]), p50: time.Duration(n[1]), p99: time.Duration(n[2])}
}

func parseBytes(s string) (int64, error) {
	mult := int64(1)
	t := strings.ToUpper(strings.TrimSpace(s))
	for suffix, m := range map[string]int64{"K": 1 << 10, "M": 1 << 20, "G": 1 << 30} {
		if strings.HasSuffix(t, suffix) {
			t, mult = strings.TrimSuffix(t, suffix), m
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// haltPollParam is how long an idle vCPU of a KVM guest polls before it
// halts; at 0, each cross-CPU wake-up is an exit to the host.
const haltPollParam = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"

func haltPoll() string {
	b, err := os.ReadFile(haltPollParam)
	if err != nil {
		return "n/a"
	}
	return strings.TrimSpace(string(b)) + " ns"
}

// setHaltPoll sets guest_halt_poll_ns and returns what puts it back.
func setHaltPoll(ns int64) (func(), error) {
	old, err := os.ReadFile(haltPollParam)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(haltPollParam, []byte(strconv.FormatInt(ns, 10)), 0); err != nil {
		return nil, err
	}
	return func() { os.WriteFile(haltPollParam, old, 0) }, nil
}
