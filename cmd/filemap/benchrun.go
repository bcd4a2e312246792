// bench's measurements: the cases, each a row per method, timed side by
// side in one run and checked against the file.

package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/filemap/filemap"
	"github.com/filemap/filemap/internal/floor"
	"github.com/filemap/filemap/internal/progress"
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

// runBench measures every case on the file fl names, or on one it
// generates, and returns the report of the rows, before ratios and targets.
// p shows which case runs, and each case's rates once it is done.
func runBench(ctx context.Context, fl benchFlags, p *progress.Reporter) (*benchReport, error) {
	b := &benchRun{ctx: ctx, p: p, opts: []filemap.Option{filemap.WithSocket(fl.socket)},
		buf: make([]byte, benchReadSize), check: make([]byte, benchReadSize)}
	for i := range b.buf {
		b.buf[i] = 1 // fault the pread loop's buffer in now, not in its timed reads
	}
	b.report.Threads = fl.threads
	restore, err := setHaltPoll(fl.haltPoll)
	if err != nil {
		return nil, err
	}
	defer restore()
	b.report.HaltPollNs = haltPollNs()
	b.report.Handler = handlerName(fl.socket)

	if b.report.Handler != "private" {
		b.note("%s: its counters include every client's faults, and DropCaches empties the caches of every client of this user", b.report.Handler)
	}

	path := fl.file
	if path == "" {
		generated, cleanup, err := generateBenchFile(fl.dir, fl.size, fl.keep, p)
		if err != nil {
			return nil, err
		}
		defer cleanup()
		path = generated
		b.report.Generated = true
	}
	if err := b.openFile(path); err != nil {
		return nil, err
	}
	defer b.f.Close()
	b.report.File, b.report.Size, b.report.Pages = path, b.size, b.npages
	n := fl.randomPages
	if n == 0 {
		n = min(max(b.npages/16, 1), benchRandomCap)
	}
	if n > b.npages {
		b.note("--random-pages %d: the file has %d pages; touching all of them", n, b.npages)
		n = b.npages
	}
	b.report.RandomPages = n
	b.order = samplePages(b.npages, n)

	b.report.Rounds = fl.rounds
	cases := b.cases(fl.threads)
	for i, c := range cases {
		if err := ctx.Err(); err != nil {
			return nil, errors.New("interrupted by a signal")
		}
		if err := b.runCase(c, i, len(cases)); err != nil {
			return nil, err
		}
	}
	return &b.report, nil
}

// benchCase is one case of the run, as its progress lines name it.
type benchCase struct {
	name string
	run  func() error
}

// cases are the run's cases, in order: the random cold case once for each
// thread count.
func (b *benchRun) cases(threads []int) []benchCase {
	cases := []benchCase{
		{caseSeq, b.repeat(b.sequentialCold)},
		{caseWarm, b.sequentialWarm},
		{caseRandomWarm, b.repeat(b.randomWarm)},
	}
	for _, t := range threads {
		cases = append(cases, benchCase{withThreads(caseRandom, t), b.repeat(func() error { return b.randomCold(t) })})
	}
	return append(cases, benchCase{caseShm, b.shm})
}

// runCase runs case i of n, showing which runs, then says what it measured.
func (b *benchRun) runCase(c benchCase, i, n int) error {
	b.caseName = fmt.Sprintf("%s (case %d of %d)", c.name, i+1, n)
	first, start := len(b.report.Rows), time.Now()
	if err := c.run(); err != nil {
		return err
	}
	rates := make([]string, 0, 4)
	for _, r := range b.report.Rows[first:] {
		rates = append(rates, r.Method+" "+r.rate())
	}
	if len(rates) == 0 {
		rates = append(rates, "skipped")
	}
	b.p.Done("%s: %s; %s", b.caseName, strings.Join(rates, ", "), fmtDuration(time.Since(start)))
	return nil
}

// stage shows, on a terminal, what the case runs now. It is not redrawn
// during a timed touch: a drawing thread woken then would share the
// touches' CPUs.
func (b *benchRun) stage(what string) {
	if b.round > 0 {
		b.p.Live("%s: round %d of %d, %s", b.caseName, b.round, b.report.Rounds, what)
		return
	}
	b.p.Live("%s: %s", b.caseName, what)
}

// withThreads is a case's name with its thread count.
func withThreads(name string, threads int) string {
	if threads == 1 {
		return name + ", 1 thread"
	}
	return fmt.Sprintf("%s, %d threads", name, threads)
}

// generateBenchFile writes a file of generated content in dir (else in a
// new temporary directory). cleanup removes what it made unless keep.
func generateBenchFile(dir string, size int64, keep bool, p *progress.Reporter) (path string, cleanup func(), err error) {
	dir, cleanup, err = workDir(dir, "filemap-bench-", keep)
	if err != nil {
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
	err = writeGenerated(f, size, 1, p)
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
	p      *progress.Reporter
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
	// hugeBase is the handler's count of extents collapsed into huge
	// folios when filemap's caches were last emptied.
	hugeBase uint64
	report   benchReport
	// caseName is the case that runs, for its progress lines, and round
	// its round (0: a case of one round).
	caseName string
	round    int
}

func (b *benchRun) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.report.Notes = append(b.report.Notes, msg)
	b.p.Println("note: %s", msg)
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

// coldFilemap empties filemap's caches and then the kernel's. It notes how
// many extents the handler has collapsed into huge folios once no collapse
// of the emptied caches is left: its counter counts every cache's since it
// started, and settle wants those of the cache filled next.
func (b *benchRun) coldFilemap() error {
	ctx, cancel := b.callCtx()
	defer cancel()
	if err := filemap.DropCaches(ctx, b.opts...); err != nil {
		return err
	}
	st, _, err := waitCollapses(b.stat, time.Minute)
	if err != nil {
		return err
	}
	b.hugeBase = st.HugeExtents
	return b.coldKernel()
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
	b.stage(mapKernel)
	ru0 := rusage()
	elapsed, lat, err := b.touch(mem, order, threads)
	ru1 := rusage()
	if err != nil {
		return fmt.Errorf("%s, %s: %w", name, mapKernel, err)
	}
	row.faultCounts = kernelCounts(ru0, ru1)
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
	b.stage(mapFilemap)
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
	row := benchRow{Case: name, Method: mapFilemap, Threads: threads, faultCounts: filemapCounts(st0, st1, ru0, ru1)}
	if msg := row.storeSurprise(cold); msg != "" {
		b.note("%s: %s", withThreads(name, threads), msg)
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
		defer func() { b.round = 0 }()
		for b.round = 1; b.round <= b.report.Rounds; b.round++ {
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
	b.stage(methodPread)
	runtime.GC()
	ru0 := rusage()
	start := time.Now()
	err := floor.Pread(b.f, b.buf, b.size)
	elapsed := time.Since(start)
	ru1 := rusage()
	if err != nil {
		return err
	}
	b.addRow(benchRow{Case: caseSeq, Method: methodPread, Threads: 1, faultCounts: kernelCounts(ru0, ru1)}, b.size, nil, elapsed, nil)

	if err := b.coldKernel(); err != nil {
		return err
	}
	b.stage(methodFloor)
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
	b.stage("reading the file into the kernel's page cache")
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
	b.stage("waiting for filemap's collapse of its cache into huge folios")
	st, waited, err := waitCollapses(b.stat, time.Minute)
	switch {
	case err != nil:
		return err
	case st.CollapsesPending > 0:
		b.note("warm rows: %d collapses still pending after a minute; measuring anyway", st.CollapsesPending)
	default:
		b.report.SettleSeconds = waited.Seconds()
		b.report.HugeExtents = st.HugeExtents - b.hugeBase
		if n := b.report.HugeExtents; n > 0 {
			b.note("warm rows: after filemap's background collapse of its cache of the file into huge folios (%d extents of 2 MiB, %s of %s; %.1fs after the pread loop)",
				n, fmtBytes(int64(n)*hugeSize), fmtBytes(b.size), b.report.SettleSeconds)
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
	b.stage("copying the file's first " + fmtSize(size) + " to /dev/shm")
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
