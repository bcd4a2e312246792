package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/filemap/filemap"
	"github.com/filemap/filemap/internal/floor"
	"github.com/filemap/filemap/internal/touch"
	"golang.org/x/sys/unix"
)

// bench's cases and methods beyond those it shares with demo.
const (
	caseRandomWarm = "random 4K, warm"
	caseShm        = "random 4K, /dev/shm"
	methodPread    = "pread 1M"
	methodFloor    = "fill path"

	// benchRandomCap bounds the default number of pages the random cases
	// touch (1/16 of the file's), so that a large file's run stays short.
	benchRandomCap = 4096
	// benchShmPrefix is how much of the file the /dev/shm case copies.
	benchShmPrefix = 64 << 20
	// benchReadSize is the pread loop's read size.
	benchReadSize = 1 << 20
)

// benchRow is one measurement: one method in one case.
type benchRow struct {
	Case    string  `json:"case"`
	Method  string  `json:"method"`
	Threads int     `json:"threads"`  // OS threads touching the pages
	Pages   int64   `json:"pages"`    // pages touched, one load each (or read, for pread)
	Bytes   int64   `json:"bytes"`    // bytes of those pages
	Seconds float64 `json:"seconds"`  // time of the touches alone
	MBps    float64 `json:"mb_per_s"` // Bytes / Seconds, in 10^6 bytes
	// FaultsPerSec is Pages / Seconds, on the random cases' rows.
	FaultsPerSec float64 `json:"faults_per_s,omitempty"`
	// SpeedVsKernel is this row's throughput over the kernel mmap row's of
	// the same case and threads (above 1: faster than the kernel), and
	// TimeVsKernel this row's time over that row's (below 1: faster). Not
	// on kernel rows.
	SpeedVsKernel float64 `json:"speed_vs_kernel,omitempty"`
	TimeVsKernel  float64 `json:"time_vs_kernel,omitempty"`
	// SpeedVsPread is this row's throughput over the pread loop's: the
	// sequential cold case's kernel and filemap rows.
	SpeedVsPread float64 `json:"speed_vs_pread,omitempty"`
	// MajorFaults and MinorFaults are getrusage(RUSAGE_SELF) deltas on
	// kernel and pread rows, and the handler's counters' deltas on filemap
	// rows (faults that reached the handler: pages already in its cache
	// are mapped by the kernel with no message).
	MajorFaults uint64 `json:"major_faults"`
	MinorFaults uint64 `json:"minor_faults"`
	// StoreReads and StoreBytes are the handler's store I/O; filemap rows only.
	StoreReads *uint64 `json:"store_reads,omitempty"`
	StoreBytes *uint64 `json:"store_bytes,omitempty"`
	// RusageMajor and RusageMinor are this process's getrusage deltas, on
	// every row.
	RusageMajor uint64 `json:"rusage_major_faults"`
	RusageMinor uint64 `json:"rusage_minor_faults"`
	// Latency is the time of each single load, on the random rows.
	Latency *benchLatency `json:"latency,omitempty"`
	// Checked is how many bytes read through the mapping were compared
	// with pread of the file after the timed touches (filemap rows).
	Checked int64 `json:"checked_bytes"`
	// Spread is the slowest round's time over the fastest's, on rows that
	// are the median of several rounds.
	Spread float64 `json:"spread,omitempty"`
}

// benchLatency summarises per-touch times: time.Now around each load.
type benchLatency struct {
	Touches int     `json:"touches"`
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
	MaxUs   float64 `json:"max_us"`
}

// benchTarget is one of issue 3's targets and what this run measured.
type benchTarget struct {
	Case    string  `json:"case"`
	Measure string  `json:"measure"` // a row field: speed_vs_kernel, time_vs_kernel, speed_vs_pread, p50_us, p99_us
	Value   float64 `json:"value"`
	Target  string  `json:"target"` // e.g. ">= 1.5"
	Met     bool    `json:"met"`
}

type benchReport struct {
	File      string `json:"file"`
	Generated bool   `json:"generated"` // a file bench wrote, rather than the user's
	Size      int64  `json:"size"`
	Pages     int64  `json:"pages"`
	Handler   string `json:"handler"`
	// ColdBy says how the kernel's page cache was emptied before each cold
	// row: "drop_caches" (sync and echo 3 > /proc/sys/vm/drop_caches) or
	// "posix_fadvise" (POSIX_FADV_DONTNEED on the file).
	ColdBy      string `json:"cold_by"`
	RandomPages int64  `json:"random_pages"`
	Threads     []int  `json:"threads"`
	// HaltPollNs is guest_halt_poll_ns of the haltpoll cpuidle driver
	// during the run; absent where there is no such driver.
	HaltPollNs *int64 `json:"halt_poll_ns,omitempty"`
	// SettleSeconds is how long the warm rows waited for the handler's
	// background collapses; HugeExtents is how many 2 MiB extents it had
	// collapsed by then.
	SettleSeconds float64 `json:"settle_seconds"`
	HugeExtents   uint64  `json:"huge_extents"`
	ShmFile       string  `json:"shm_file,omitempty"` // the /dev/shm copy; empty if skipped
	ShmSize       int64   `json:"shm_size,omitempty"`
	// Rounds is how many times each case but /dev/shm ran, its kernel,
	// pread and filemap rows interleaved; each of its rows is the median
	// round.
	Rounds  int           `json:"rounds"`
	Rows    []benchRow    `json:"rows"`
	Targets []benchTarget `json:"targets"`
	Checked int64         `json:"checked_bytes"`
	Notes   []string      `json:"notes,omitempty"`
}

func bench(args []string) error {
	fs := newFlags("bench", "[flags] [FILE]", "Measures filemap beside the kernel's own mmap, and a plain pread loop, on\n"+
		"FILE (opened read-only), or on a generated file: side by side in one run,\n"+
		"as ratios, since only ratios within one run mean much on a shared machine.\n\n"+
		"  sequential, cold   one load per page; the kernel's page cache dropped\n"+
		"                     before each row (as root sync and drop_caches, else\n"+
		"                     posix_fadvise(DONTNEED)) and filemap's emptied too\n"+
		"                     (DropCaches: with a daemon, the caches of every\n"+
		"                     client of this user)\n"+
		"  sequential, warm   the file in the kernel's page cache; a new filemap\n"+
		"                     mapping of an object already in filemap's cache\n"+
		"  random 4K, warm    one thread, distinct pages in a fixed random order of\n"+
		"                     a new mapping, every page cached: the fault served\n"+
		"                     from the cache (filemap's memfd, the kernel's page\n"+
		"                     cache); the latency of each load\n"+
		"  random 4K, cold    distinct pages in a fixed random order, split among\n"+
		"                     --threads locked OS threads; MADV_RANDOM and\n"+
		"                     filemap.Random; the latency of each load\n"+
		"  random 4K, /dev/shm\n"+
		"                     the same, one thread, on a copy of the file's first\n"+
		"                     64 MiB in /dev/shm: faults served with no disk I/O,\n"+
		"                     each one a round trip through the handler\n\n"+
		"On a KVM guest whose cpuidle driver is haltpoll, an idle vCPU woken by\n"+
		"another costs tens of microseconds unless it polls first: every fault\n"+
		"that reaches the handler wakes two threads. --halt-poll-ns sets\n"+
		"/sys/module/haltpoll/parameters/guest_halt_poll_ns for the run (root)\n"+
		"and restores it after; the header shows the value in force.\n\n"+
		"The sequential cold case also times a pread loop (1 MiB reads into one\n"+
		"buffer): the I/O limit; and filemap's fill path alone (O_DIRECT reads of\n"+
		"1 MiB, two in flight, each written into a new memfd; no fault, no message):\n"+
		"the floor of filemap's row. Every page read through filemap is compared\n"+
		"with pread of the file; a difference is an error naming its offset.\n\n"+
		"Every case but /dev/shm runs --rounds times, the kernel's, pread's and\n"+
		"filemap's rows interleaved, and each row shown is the median round; its\n"+
		"spread is the slowest round's time over the fastest's. A shared\n"+
		"machine's disk and CPUs drift over seconds: a spread far above 1 says\n"+
		"the row's ratios are loose.")
	size := byteSize(1 << 30)
	fs.Var(&size, "size", "size of the generated file")
	dir := fs.String("dir", "", "directory for the generated file (default: a new temporary directory)")
	keep := fs.Bool("keep", false, "keep the generated file")
	socket := fs.String("socket", "", "daemon socket (default $FILEMAP_SOCKET, else a private handler)")
	threadsFlag := fs.String("threads", "1,2", "comma-separated thread counts for the random cases")
	randomPages := fs.Int64("random-pages", 0, fmt.Sprintf("pages the random cases touch (0: 1/16 of the file's, at most %d)", benchRandomCap))
	asJSON := fs.Bool("json", false, "print JSON for machines")
	haltPoll := fs.Int64("halt-poll-ns", -1, "set the haltpoll cpuidle driver's guest_halt_poll_ns for the run (-1: leave it)")
	rounds := fs.Int("rounds", 3, "rounds of each case but /dev/shm, the methods interleaved; each row is the median round")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return fmt.Errorf("want at most one FILE, got %q", fs.Args())
	}
	threads, err := parseThreads(*threadsFlag)
	if err != nil {
		return err
	}
	if *randomPages < 0 {
		return fmt.Errorf("--random-pages %d: want 0 or more", *randomPages)
	}
	if *rounds < 1 {
		return fmt.Errorf("--rounds %d: want 1 or more", *rounds)
	}
	userFile := fs.Arg(0)
	if userFile != "" {
		var genOnly []string
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "size" || f.Name == "dir" || f.Name == "keep" {
				genOnly = append(genOnly, "--"+f.Name)
			}
		})
		if len(genOnly) > 0 {
			return fmt.Errorf("%s: only for the generated file, not with FILE %s", strings.Join(genOnly, ", "), userFile)
		}
	} else if size < 1 {
		return fmt.Errorf("--size %d: at least one byte (the kernel cannot map an empty file)", size)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second signal kills, as usual

	b := &benchRun{ctx: ctx, opts: []filemap.Option{filemap.WithSocket(*socket)}, buf: make([]byte, benchReadSize), check: make([]byte, benchReadSize)}
	for i := range b.buf {
		b.buf[i] = 1 // fault the pread loop's buffer in now, not in its timed reads
	}
	b.report.Threads = threads
	restore, err := setHaltPoll(*haltPoll)
	if err != nil {
		return err
	}
	defer restore()
	b.report.HaltPollNs = haltPollNs()
	b.report.Handler = "private"
	if s := *socket; s != "" {
		b.report.Handler = "daemon at " + s
	} else if s := os.Getenv("FILEMAP_SOCKET"); s != "" {
		b.report.Handler = "daemon at " + s
	}

	if b.report.Handler != "private" {
		b.note("%s: its counters include every client's faults, and DropCaches empties the caches of every client of this user", b.report.Handler)
	}

	path := userFile
	if path == "" {
		p, cleanup, err := generateBenchFile(*dir, int64(size), *keep)
		if err != nil {
			return err
		}
		defer cleanup()
		path = p
		b.report.Generated = true
	}
	if err := b.openFile(path); err != nil {
		return err
	}
	defer b.f.Close()
	b.report.File, b.report.Size, b.report.Pages = path, b.size, b.npages
	n := *randomPages
	if n == 0 {
		n = min(max(b.npages/16, 1), benchRandomCap)
	}
	if n > b.npages {
		b.note("--random-pages %d: the file has %d pages; touching all of them", n, b.npages)
		n = b.npages
	}
	b.report.RandomPages = n
	b.order = samplePages(b.npages, n)

	b.report.Rounds = *rounds
	steps := []func() error{b.repeat(b.sequentialCold), b.sequentialWarm, b.repeat(b.randomWarm)}
	for _, t := range threads {
		steps = append(steps, b.repeat(func() error { return b.randomCold(t) }))
	}
	steps = append(steps, b.shm)
	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return errors.New("interrupted by a signal")
		}
		if err := step(); err != nil {
			return err
		}
	}
	b.ratios()
	b.targets()
	if *asJSON {
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		return e.Encode(b.report)
	}
	return b.printTable()
}

// parseThreads parses --threads: distinct counts from 1 to 64.
func parseThreads(s string) ([]int, error) {
	var ts []int
	for f := range strings.SplitSeq(s, ",") {
		t, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || t < 1 || t > 64 {
			return nil, fmt.Errorf("--threads %q: want comma-separated thread counts from 1 to 64", s)
		}
		if slices.Contains(ts, t) {
			return nil, fmt.Errorf("--threads %q: %d twice", s, t)
		}
		ts = append(ts, t)
	}
	return ts, nil
}

// generateBenchFile writes a file of generated content in dir (else in a
// new temporary directory). cleanup removes what it made unless keep.
func generateBenchFile(dir string, size int64, keep bool) (path string, cleanup func(), err error) {
	cleanup = func() {}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "filemap-bench-")
		if err != nil {
			return "", nil, err
		}
		dir = tmp
		if !keep {
			cleanup = func() { os.RemoveAll(tmp) }
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	f, err := os.CreateTemp(dir, "filemap-bench-*.bin")
	if err != nil {
		cleanup()
		return "", nil, err
	}
	path = f.Name()
	if !keep {
		prev := cleanup
		cleanup = func() { os.Remove(path); prev() }
	}
	err = writeGenerated(f, size, 1)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("write %s: %w", path, err)
	}
	return path, cleanup, nil
}

type benchRun struct {
	ctx    context.Context
	opts   []filemap.Option // which handler
	f      *os.File         // the file, read-only
	path   string
	size   int64
	npages int64
	order  []int64 // the random cases' pages
	buf    []byte  // the pread loop's buffer
	check  []byte  // the checks' buffer
	// dropCaches is whether writing /proc/sys/vm/drop_caches works; it is
	// tried once.
	dropTried, dropCaches bool
	warnedWarm            bool
	report                benchReport
}

func (b *benchRun) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.report.Notes = append(b.report.Notes, msg)
	fmt.Fprintln(os.Stderr, "filemap bench: note:", msg)
}

func (b *benchRun) openFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case fi.IsDir():
		err = fmt.Errorf("%s: is a directory", path)
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("%s: not a regular file", path)
	case fi.Size() == 0:
		err = fmt.Errorf("%s: empty (the kernel cannot map an empty file)", path)
	}
	if err != nil {
		f.Close()
		return err
	}
	b.f, b.path, b.size, b.npages = f, path, fi.Size(), (fi.Size()+pageSize-1)/pageSize
	return nil
}

// callCtx bounds one request to the handler (a context given to Open
// bounds its requests, not the mapping's life).
func (b *benchRun) callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.ctx, 30*time.Second)
}

// stat returns the handler's counters.
func (b *benchRun) stat() (filemap.Stats, error) {
	ctx, cancel := b.callCtx()
	defer cancel()
	return filemap.Stat(ctx, b.opts...)
}

// coldKernel empties the kernel's page cache of the file: all of it as
// root (sync, then drop_caches), else the file's alone with
// POSIX_FADV_DONTNEED. It notes pages that stay (on tmpfs, or mapped
// elsewhere).
func (b *benchRun) coldKernel() error {
	if !b.dropTried {
		b.dropTried = true
		b.dropCaches = os.Geteuid() == 0
		b.report.ColdBy = "posix_fadvise"
	}
	if b.dropCaches {
		unix.Sync()
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
			b.note("cannot drop the page cache (%v): using posix_fadvise(POSIX_FADV_DONTNEED) on the file", err)
			b.dropCaches = false
		} else {
			b.report.ColdBy = "drop_caches"
		}
	}
	if !b.dropCaches {
		if err := unix.Fadvise(int(b.f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			return fmt.Errorf("posix_fadvise(%s, POSIX_FADV_DONTNEED): %w", b.path, err)
		}
	}
	n, err := residentPages(b.f, b.size)
	if err != nil {
		return err
	}
	if n > 0 && !b.warnedWarm {
		b.warnedWarm = true
		b.note("%s: %d of %d pages still in the page cache after dropping it (tmpfs? mapped elsewhere?): the cold cases are not cold",
			b.path, n, b.npages)
	}
	return nil
}

// coldFilemap empties filemap's caches and then the kernel's.
func (b *benchRun) coldFilemap() error {
	ctx, cancel := b.callCtx()
	defer cancel()
	if err := filemap.DropCaches(ctx, b.opts...); err != nil {
		return err
	}
	return b.coldKernel()
}

// kernelMap maps f with the kernel's mmap (MAP_SHARED, PROT_READ) and advice.
func kernelMap(f *os.File, size int64, advice int) ([]byte, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", f.Name(), err)
	}
	if err := unix.Madvise(mem, advice); err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("madvise %s: %w", f.Name(), err)
	}
	return mem, nil
}

// kernelRow times first touches of a new kernel mapping of f: every page
// in sequence if order is nil, else the pages of order split among threads.
func (b *benchRun) kernelRow(name string, f *os.File, size int64, order []int64, threads int) error {
	advice := unix.MADV_NORMAL
	if order != nil {
		advice = unix.MADV_RANDOM
	}
	mem, err := kernelMap(f, size, advice)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	row := benchRow{Case: name, Method: mapKernel, Threads: threads}
	ru0 := rusage()
	elapsed, lat, err := b.touch(mem, order, threads)
	ru1 := rusage()
	if err != nil {
		return fmt.Errorf("%s, %s: %w", name, mapKernel, err)
	}
	row.MajorFaults, row.MinorFaults = uint64(ru1.Majflt-ru0.Majflt), uint64(ru1.Minflt-ru0.Minflt)
	row.RusageMajor, row.RusageMinor = row.MajorFaults, row.MinorFaults
	b.addRow(row, size, order, elapsed, lat)
	return nil
}

// filemapRow times first touches of a new filemap mapping of f with advice,
// then checks every touched page against pread of the file.
func (b *benchRun) filemapRow(name string, f *os.File, size int64, advice filemap.Advice, order []int64, threads int, cold bool) error {
	ctx, cancel := b.callCtx()
	m, err := filemap.Open(ctx, f.Name(), append(slices.Clone(b.opts), filemap.WithAdvice(advice))...)
	cancel()
	if err != nil {
		return err
	}
	defer m.Close()
	if m.Size() != size {
		return fmt.Errorf("%s: filemap maps %d bytes, the file has %d", f.Name(), m.Size(), size)
	}
	mem := m.Bytes()
	st0, err := b.stat()
	if err != nil {
		return err
	}
	ru0 := rusage()
	elapsed, lat, err := b.touch(mem, order, threads)
	ru1 := rusage()
	if err != nil {
		return fmt.Errorf("%s, %s: %w", name, mapFilemap, err)
	}
	st1, err := b.stat()
	if err != nil {
		return err
	}
	row := benchRow{Case: name, Method: mapFilemap, Threads: threads}
	reads, nbytes := st1.StoreReads-st0.StoreReads, st1.StoreBytes-st0.StoreBytes
	row.MajorFaults, row.MinorFaults = st1.MajorFaults-st0.MajorFaults, st1.MinorFaults-st0.MinorFaults
	row.StoreReads, row.StoreBytes = &reads, &nbytes
	row.RusageMajor, row.RusageMinor = uint64(ru1.Majflt-ru0.Majflt), uint64(ru1.Minflt-ru0.Minflt)
	if !cold && reads != 0 {
		b.note("%s: filemap read the store %d times (%d bytes) with its cache warm", name, reads, nbytes)
	}
	if cold && reads == 0 {
		b.note("%s, %d threads: filemap did no store I/O with its cache supposedly cold", name, threads)
	}
	// The check, after the timing: every touched page, whole.
	if order == nil {
		row.Checked, err = b.compare(mem, f, 0, size)
	} else {
		for _, p := range order {
			var n int64
			n, err = b.compare(mem, f, p*pageSize, min((p+1)*pageSize, size))
			row.Checked += n
			if err != nil {
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("%s, %s: %w", name, mapFilemap, err)
	}
	b.report.Checked += row.Checked
	b.addRow(row, size, order, elapsed, lat)
	return nil
}

// touch loads one byte of each page of mem: all of them in sequence on
// this goroutine if order is nil, else order's pages split among threads.
func (b *benchRun) touch(mem []byte, order []int64, threads int) (time.Duration, []time.Duration, error) {
	if order == nil {
		elapsed, err := timeTouches(mem, nil)
		return elapsed, nil, err
	}
	return timeEachTouch(mem, order, threads)
}

// timeEachTouch loads one byte of each page of order, split into threads
// contiguous shares, each loaded by a goroutine locked to an OS thread of
// its own, and times each load. It returns the time from the start until
// the last share is done, and each load's time, in order's order.
func timeEachTouch(mem []byte, order []int64, threads int) (time.Duration, []time.Duration, error) {
	lat := make([]time.Duration, len(order))
	for i := range lat {
		lat[i] = -1 // fault the slice in now, not among the timed loads
	}
	runtime.GC() // no collection of earlier garbage during the touches
	elapsed, err := touch.Pages(mem, order, pageSize, threads, lat)
	return elapsed, lat, err
}

// compare checks mem[off:end] against pread of f and returns how many
// bytes it compared; a difference is an error naming its offset.
func (b *benchRun) compare(mem []byte, f *os.File, off, end int64) (int64, error) {
	return compareWithFile(mem, f, off, end, b.check)
}

// compareWithFile checks mem[off:end] against f's bytes there, read with
// pread into buf, and returns how many bytes it compared. A difference is
// an error naming the first offset that differs; a page of mem that cannot
// be read, one naming its offset.
func compareWithFile(mem []byte, f *os.File, off, end int64, buf []byte) (int64, error) {
	checked := int64(0)
	for o := off; o < end; {
		want := buf[:min(int64(len(buf)), end-o)]
		n, err := f.ReadAt(want, o)
		if n < len(want) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return checked, fmt.Errorf("%s: read %d bytes at offset %d: %w", f.Name(), len(want), o, err)
		}
		bad := -1
		if ferr := guardFaults(mem, func() {
			if !bytes.Equal(mem[o:o+int64(n)], want) {
				for i := range want {
					if mem[o+int64(i)] != want[i] {
						bad = i
						break
					}
				}
			}
		}); ferr != nil {
			return checked, ferr
		}
		if bad >= 0 {
			at := o + int64(bad)
			return checked, fmt.Errorf("%s: byte at offset %d (page %d) reads %#02x through the mapping, %#02x from the file",
				f.Name(), at, at/pageSize, mem[at], want[bad])
		}
		o += int64(n)
		checked += int64(n)
	}
	return checked, nil
}

// addRow fills in a row's rates and latencies and records it.
func (b *benchRun) addRow(row benchRow, size int64, order []int64, elapsed time.Duration, lat []time.Duration) {
	row.Seconds = elapsed.Seconds()
	if order == nil {
		row.Pages, row.Bytes = (size+pageSize-1)/pageSize, size
	} else {
		row.Pages = int64(len(order))
		for _, p := range order {
			row.Bytes += min((p+1)*pageSize, size) - p*pageSize
		}
		if row.Seconds > 0 {
			row.FaultsPerSec = float64(row.Pages) / row.Seconds
		}
	}
	if row.Seconds > 0 {
		row.MBps = float64(row.Bytes) / row.Seconds / 1e6
	}
	if lat != nil {
		row.Latency = summarise(lat)
	}
	b.report.Rows = append(b.report.Rows, row)
}

// summarise gives the 50th and 99th percentiles and the maximum of lat.
func summarise(lat []time.Duration) *benchLatency {
	s := slices.Clone(lat)
	slices.Sort(s)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return &benchLatency{Touches: len(s), P50us: us(percentile(s, 50)), P99us: us(percentile(s, 99)), MaxUs: us(s[len(s)-1])}
}

// percentile is the nearest-rank q-th percentile of sorted.
func percentile(sorted []time.Duration, q int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*q + 99) / 100 // ceil(n·q/100), a rank from 1
	return sorted[min(max(i, 1), len(sorted))-1]
}

// samplePages is a fixed-seed choice of n distinct pages of npages, in
// random order. It never builds a permutation of a large file's pages.
func samplePages(npages, n int64) []int64 {
	r := rand.New(rand.NewPCG(0x66696c656d6170, 3))
	if n*4 >= npages {
		perm := r.Perm(int(npages))[:n]
		order := make([]int64, n)
		for i, p := range perm {
			order[i] = int64(p)
		}
		return order
	}
	seen := make(map[int64]bool, n)
	order := make([]int64, 0, n)
	for int64(len(order)) < n {
		p := r.Int64N(npages)
		if !seen[p] {
			seen[p] = true
			order = append(order, p)
		}
	}
	return order
}

// repeat makes a step that runs step, which measures one case,
// b.report.Rounds times and keeps, of each row, the median round. A shared machine's disk
// and CPUs drift over seconds; interleaving the methods round by round
// lets each see the same drift.
func (b *benchRun) repeat(step func() error) func() error {
	return func() error {
		first := len(b.report.Rows)
		for range b.report.Rounds {
			if err := b.ctx.Err(); err != nil {
				return errors.New("interrupted by a signal")
			}
			if err := step(); err != nil {
				return err
			}
		}
		b.report.Rows = append(b.report.Rows[:first], medianRows(b.report.Rows[first:])...)
		return nil
	}
}

// medianRows keeps, of the rows of each case, method and thread count, the
// one with the median time, with the spread of their times; in the order
// each first appears.
func medianRows(rows []benchRow) []benchRow {
	type key struct {
		c, m string
		t    int
	}
	var order []key
	by := map[key][]benchRow{}
	for _, r := range rows {
		k := key{r.Case, r.Method, r.Threads}
		if by[k] == nil {
			order = append(order, k)
		}
		by[k] = append(by[k], r)
	}
	out := make([]benchRow, 0, len(order))
	for _, k := range order {
		rs := by[k]
		slices.SortStableFunc(rs, func(a, b benchRow) int { return cmp.Compare(a.Seconds, b.Seconds) })
		m := rs[len(rs)/2]
		if len(rs) > 1 && rs[0].Seconds > 0 {
			m.Spread = rs[len(rs)-1].Seconds / rs[0].Seconds
		}
		out = append(out, m)
	}
	return out
}

func (b *benchRun) sequentialCold() error {
	if err := b.coldKernel(); err != nil {
		return err
	}
	if err := b.kernelRow(caseSeq, b.f, b.size, nil, 1); err != nil {
		return err
	}

	if err := b.coldKernel(); err != nil {
		return err
	}
	runtime.GC()
	ru0 := rusage()
	start := time.Now()
	err := floor.Pread(b.f, b.buf, b.size)
	elapsed := time.Since(start)
	ru1 := rusage()
	if err != nil {
		return err
	}
	row := benchRow{Case: caseSeq, Method: methodPread, Threads: 1}
	row.MajorFaults, row.MinorFaults = uint64(ru1.Majflt-ru0.Majflt), uint64(ru1.Minflt-ru0.Minflt)
	row.RusageMajor, row.RusageMinor = row.MajorFaults, row.MinorFaults
	b.addRow(row, b.size, nil, elapsed, nil)

	if err := b.coldKernel(); err != nil {
		return err
	}
	if elapsed, err = floor.Copy(b.f.Name(), b.size); err != nil {
		return fmt.Errorf("the fill path's floor: %w", err)
	}
	b.addRow(benchRow{Case: caseSeq, Method: methodFloor, Threads: 1}, b.size, nil, elapsed, nil)

	if err := b.coldFilemap(); err != nil {
		return err
	}
	return b.filemapRow(caseSeq, b.f, b.size, filemap.Normal, nil, 1, true)
}

// sequentialWarm maps the file anew with every page in the kernel's page
// cache, and in filemap's (the cold row read them all), once filemap's
// background collapses of the extents it read have settled: a warm mapping
// is one made after the cache has been filled, not while it is converted.
func (b *benchRun) sequentialWarm() error {
	if err := floor.Pread(b.f, b.buf, b.size); err != nil {
		return err
	}
	if err := b.settle(); err != nil {
		return err
	}
	return b.repeat(func() error {
		if err := b.kernelRow(caseWarm, b.f, b.size, nil, 1); err != nil {
			return err
		}
		return b.filemapRow(caseWarm, b.f, b.size, filemap.Normal, nil, 1, false)
	})()
}

// settle waits until the handler has no collapse pending, for at most a
// minute, and notes how long that took.
func (b *benchRun) settle() error {
	st, waited, err := waitCollapses(b.stat, time.Minute)
	switch {
	case err != nil:
		return err
	case st.CollapsesPending > 0:
		b.note("warm rows: %d collapses still pending after a minute; measuring anyway", st.CollapsesPending)
	default:
		b.report.SettleSeconds = waited.Seconds()
		b.report.HugeExtents = st.HugeExtents
		if st.HugeExtents > 0 {
			b.note("warm rows: after filemap's background collapse of the cache into huge folios (%d extents of 2 MiB; %.1fs after the pread loop)",
				st.HugeExtents, b.report.SettleSeconds)
		}
	}
	return nil
}

// waitCollapses waits, for at most limit, until the handler has collapsed
// the extents it was given into huge folios: a warm mapping is one made
// after the cache has been filled, not while it is converted. It returns
// the handler's counters at the end and how long it waited.
func waitCollapses(stat func() (filemap.Stats, error), limit time.Duration) (filemap.Stats, time.Duration, error) {
	start := time.Now()
	for {
		st, err := stat()
		if err != nil || st.CollapsesPending == 0 || time.Since(start) > limit {
			return st, time.Since(start), err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// randomWarm touches random pages of new mappings of a file that both
// caches hold whole (sequentialWarm read it all): the fault served from the
// cache. filemap's are the kernel's own faults on its memfd; the handler
// sees none of them.
func (b *benchRun) randomWarm() error {
	if err := b.kernelRow(caseRandomWarm, b.f, b.size, b.order, 1); err != nil {
		return err
	}
	return b.filemapRow(caseRandomWarm, b.f, b.size, filemap.Random, b.order, 1, false)
}

func (b *benchRun) randomCold(threads int) error {
	if err := b.coldKernel(); err != nil {
		return err
	}
	if err := b.kernelRow(caseRandom, b.f, b.size, b.order, threads); err != nil {
		return err
	}
	if err := b.coldFilemap(); err != nil {
		return err
	}
	return b.filemapRow(caseRandom, b.f, b.size, filemap.Random, b.order, threads, true)
}

// shm measures random first touches, one thread, of a copy of the file's
// first 64 MiB in /dev/shm: the kernel's minor faults, and filemap's faults
// whose store read is a memory copy.
func (b *benchRun) shm() error {
	if fi, err := os.Stat("/dev/shm"); err != nil || !fi.IsDir() {
		b.note("no /dev/shm (%v): skipping %q", err, caseShm)
		return nil
	}
	size := min(b.size, benchShmPrefix)
	f, err := os.CreateTemp("/dev/shm", "filemap-bench-*.bin")
	if err != nil {
		b.note("cannot write to /dev/shm (%v): skipping %q", err, caseShm)
		return nil
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := io.Copy(f, io.NewSectionReader(b.f, 0, size)); err != nil {
		return fmt.Errorf("copy %s to %s: %w", b.path, f.Name(), err)
	}
	b.report.ShmFile, b.report.ShmSize = f.Name(), size
	npages := (size + pageSize - 1) / pageSize
	order := samplePages(npages, min(int64(len(b.order)), npages))
	if err := b.kernelRow(caseShm, f, size, order, 1); err != nil {
		return err
	}
	if err := b.coldFilemap(); err != nil { // a new file: filemap's cache of it is cold anyway
		return err
	}
	return b.filemapRow(caseShm, f, size, filemap.Random, order, 1, true)
}

// ratios relates each row to the kernel's and the pread loop's rows of
// its case.
func (b *benchRun) ratios() {
	rows := b.report.Rows
	find := func(c, method string, threads int) *benchRow {
		for i := range rows {
			if rows[i].Case == c && rows[i].Method == method && rows[i].Threads == threads {
				return &rows[i]
			}
		}
		return nil
	}
	for i := range rows {
		r := &rows[i]
		if k := find(r.Case, mapKernel, r.Threads); k != nil && r.Method != mapKernel && k.MBps > 0 && k.Seconds > 0 {
			r.SpeedVsKernel, r.TimeVsKernel = r.MBps/k.MBps, r.Seconds/k.Seconds
		}
		if p := find(r.Case, methodPread, r.Threads); p != nil && r.Method != methodPread && p.MBps > 0 {
			r.SpeedVsPread = r.MBps / p.MBps
		}
	}
}

// targets compares the filemap rows with issue 3's targets.
func (b *benchRun) targets() {
	b.report.Targets = []benchTarget{}
	add := func(c string, threads int, measure string, atLeast bool, limit float64) {
		var r *benchRow
		for i := range b.report.Rows {
			if x := &b.report.Rows[i]; x.Case == c && x.Method == mapFilemap && x.Threads == threads {
				r = x
			}
		}
		if r == nil {
			return
		}
		var v float64
		switch measure {
		case "speed_vs_kernel":
			v = r.SpeedVsKernel
		case "time_vs_kernel":
			v = r.TimeVsKernel
		case "speed_vs_pread":
			v = r.SpeedVsPread
		case "p50_us":
			v = r.Latency.P50us
		case "p99_us":
			v = r.Latency.P99us
		}
		t := benchTarget{Case: c, Measure: measure, Value: v, Target: fmt.Sprintf("<= %g", limit), Met: v <= limit}
		if atLeast {
			t.Target, t.Met = fmt.Sprintf(">= %g", limit), v >= limit
		}
		if threads > 1 {
			t.Case = fmt.Sprintf("%s, %d threads", c, threads)
		}
		b.report.Targets = append(b.report.Targets, t)
	}
	add(caseSeq, 1, "speed_vs_kernel", true, 1.5)
	add(caseSeq, 1, "speed_vs_pread", true, 0.8)
	add(caseWarm, 1, "time_vs_kernel", false, 1.3)
	t := slices.Max(b.report.Threads)
	if slices.Contains(b.report.Threads, 2) {
		t = 2
	}
	add(caseRandom, t, "speed_vs_kernel", true, 1.0)
	add(caseRandomWarm, 1, "p50_us", false, 20)
	add(caseRandomWarm, 1, "p99_us", false, 100)
}

func (b *benchRun) printTable() error {
	r := &b.report
	what := "yours, read-only"
	if r.Generated {
		what = "generated"
	}
	fmt.Fprintf(stdout, "filemap bench: %s (%s), %s, %d pages; handler: %s\n", r.File, what, fmtSize(r.Size), r.Pages, r.Handler)
	fmt.Fprintf(stdout, "cold: %s before each cold row, and filemap.DropCaches; random: %d pages, threads %s", r.ColdBy, r.RandomPages, joinInts(r.Threads))
	if r.ShmFile != "" {
		fmt.Fprintf(stdout, "; /dev/shm: the first %s", fmtSize(r.ShmSize))
	}
	if r.HaltPollNs != nil {
		fmt.Fprintf(stdout, "; guest_halt_poll_ns %d", *r.HaltPollNs)
	}
	fmt.Fprint(stdout, "\n\n")

	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "case\tmethod\tthreads\tpages\ttime\tspread\trate\tspeed/kernel\ttime/kernel\tspeed/pread\tmajor faults\tminor faults\tstore reads\t")
	ratio := func(v float64) string {
		if v == 0 {
			return ""
		}
		return fmt.Sprintf("%.2fx", v)
	}
	for _, row := range r.Rows {
		rate := fmt.Sprintf("%.0f MB/s", row.MBps)
		if row.FaultsPerSec > 0 {
			rate = fmt.Sprintf("%.0f faults/s", row.FaultsPerSec)
		}
		reads := "-"
		if row.StoreReads != nil {
			reads = fmt.Sprint(*row.StoreReads)
		}
		spread := ""
		if row.Spread > 0 {
			spread = fmt.Sprintf("%.2fx", row.Spread)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t\n", row.Case, row.Method, row.Threads, row.Pages,
			fmtDuration(time.Duration(row.Seconds*float64(time.Second))), spread, rate,
			ratio(row.SpeedVsKernel), ratio(row.TimeVsKernel), ratio(row.SpeedVsPread), row.MajorFaults, row.MinorFaults, reads)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprint(stdout, "\nfault service latency: time.Now around each single-byte load\n\n")
	fmt.Fprintln(tw, "case\tmethod\tthreads\ttouches\tp50\tp99\tmax\t")
	for _, row := range r.Rows {
		if l := row.Latency; l != nil {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t\n", row.Case, row.Method, row.Threads, l.Touches, fmtMicros(l.P50us), fmtMicros(l.P99us), fmtMicros(l.MaxUs))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprint(stdout, "\ntargets (issue 3):\n\n")
	for _, t := range r.Targets {
		met := "missed"
		if t.Met {
			met = "met"
		}
		fmt.Fprintf(tw, "%s\tfilemap %s\t%.3g\twant %s\t%s\t\n", t.Case, t.Measure, t.Value, t.Target, met)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(stdout, "\nspeed/kernel: throughput over the kernel mmap row's (above 1 is faster); time/kernel: its inverse")
	if r.Rounds > 1 {
		fmt.Fprintf(stdout, "rows but /dev/shm: the median of %d rounds, the methods interleaved; spread: the slowest round's time over the fastest's\n", r.Rounds)
	}
	fmt.Fprintln(stdout, "faults: getrusage(RUSAGE_SELF) on kernel and pread rows; the handler's counters on filemap rows")
	fmt.Fprintln(stdout, "fill path: filemap's fill path alone, the floor of its cold row: O_DIRECT reads of 1 MiB, two in flight, each written into a new memfd")
	for _, n := range r.Notes {
		fmt.Fprintln(stdout, "note:", n)
	}
	fmt.Fprintf(stdout, "checked against pread of the file: %d bytes read through filemap\n", r.Checked)
	return nil
}

func fmtMicros(us float64) string {
	if us >= 1000 {
		return fmt.Sprintf("%.2fms", us/1000)
	}
	return fmt.Sprintf("%.1fµs", us)
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
