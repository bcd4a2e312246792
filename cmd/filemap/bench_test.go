package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// benchRows is the (case, method, threads) of every row bench prints, in
// order, for the given --threads.
func benchRows(threads ...int) [][3]string {
	rows := [][3]string{
		{caseSeq, mapKernel, "1"}, {caseSeq, methodPread, "1"}, {caseSeq, methodFloor, "1"}, {caseSeq, mapFilemap, "1"},
		{caseWarm, mapKernel, "1"}, {caseWarm, mapFilemap, "1"},
		{caseRandomWarm, mapKernel, "1"}, {caseRandomWarm, mapFilemap, "1"},
	}
	for _, t := range threads {
		rows = append(rows, [3]string{caseRandom, mapKernel, fmt.Sprint(t)}, [3]string{caseRandom, mapFilemap, fmt.Sprint(t)})
	}
	return append(rows, [3]string{caseShm, mapKernel, "1"}, [3]string{caseShm, mapFilemap, "1"})
}

func TestBench(t *testing.T) {
	dir := t.TempDir()
	r := filemapCLI(t, "bench", "--size", "32M", "--dir", dir)
	r.wantCode(t, 0)
	t.Logf("filemap bench --size 32M:\n%s%s", r.stdout, r.stderr)
	out := string(r.stdout)
	for _, row := range benchRows(1, 2) {
		// case, method, threads, pages, time, spread (all but /dev/shm), rate
		spread := `[0-9.]+x\s+`
		if row[0] == caseShm {
			spread = ""
		}
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(row[0]) + `\s+` + regexp.QuoteMeta(row[1]) + `\s+` + row[2] +
			`\s+\d+\s+\S+\s+` + spread + `\d+ (MB|faults)/s\s`)
		if !re.MatchString(out) {
			t.Errorf("no %q row for %q with %s threads in the table", row[0], row[1], row[2])
		}
	}
	for _, row := range benchRows(1, 2) {
		if row[0] != caseRandomWarm && row[0] != caseRandom && row[0] != caseShm {
			continue // only the random rows have latencies
		}
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(row[0]) + `\s+` + regexp.QuoteMeta(row[1]) + `\s+` + row[2] +
			`\s+\d+\s+[0-9.]+(µs|ms)\s+[0-9.]+(µs|ms)\s+[0-9.]+(µs|ms)\s`)
		if !re.MatchString(out) {
			t.Errorf("no latency row for %q, %q, %s threads", row[0], row[1], row[2])
		}
	}
	for _, col := range []string{"case", "method", "threads", "time", "spread", "rate", "speed/kernel", "time/kernel", "speed/pread",
		"major faults", "minor faults", "store reads", "p50", "p99", "max", "targets"} {
		if !strings.Contains(out, col) {
			t.Errorf("the output has no %q", col)
		}
	}
	// The targets say what they ask, in words.
	if !strings.Contains(out, "\ntargets: what filemap aims for beside the kernel's own mmap and a pread loop\n") {
		t.Error("no heading of the targets")
	}
	for _, goal := range [][2]string{
		{caseSeq, "filemap's speed ≥ 1.5× the kernel mmap's"},
		{caseSeq, "filemap's speed ≥ 0.8× the pread loop's"},
		{caseWarm, "filemap's time ≤ 1.3× the kernel mmap's"},
		{caseRandom + ", 2 threads", "filemap's speed ≥ 1× the kernel mmap's"},
		{caseRandomWarm, "filemap's p50 latency ≤ 20µs"},
		{caseRandomWarm, "filemap's p99 latency ≤ 100µs"},
	} {
		re := `(?m)^` + regexp.QuoteMeta(goal[0]) + `\s+` + regexp.QuoteMeta(goal[1]) + `\s+[0-9.]+(×|µs|ms)\s+(met|missed)\s`
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("no target %q of %q with its value in the output", goal[1], goal[0])
		}
	}
	if strings.Contains(strings.ToLower(out), "issue") {
		t.Error("the output names an issue, which means nothing to its reader")
	}
	if !regexp.MustCompile(`checked against pread of the file: [1-9]\d* bytes`).MatchString(out) {
		t.Error("bench did not say how many bytes it checked")
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("bench left %d files in --dir", len(left))
	}
}

func TestBenchJSON(t *testing.T) {
	r := filemapCLI(t, "bench", "--size", "32M", "--json")
	r.wantCode(t, 0)
	var rep benchReport
	dec := json.NewDecoder(bytes.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("filemap bench --json: %v; stdout:\n%s", err, r.stdout)
	}
	if dec.More() {
		t.Error("more than one JSON value on stdout")
	}
	const size = 32 << 20
	if rep.Size != size || rep.Pages != size/pageSize || !rep.Generated || rep.Handler != "private" {
		t.Errorf("report: size %d, pages %d, generated %v, handler %q", rep.Size, rep.Pages, rep.Generated, rep.Handler)
	}
	if rep.RandomPages != size/pageSize/16 || fmt.Sprint(rep.Threads) != "[1 2]" {
		t.Errorf("random pages %d, threads %v; want %d, [1 2]", rep.RandomPages, rep.Threads, size/pageSize/16)
	}
	if rep.Rounds != 3 {
		t.Errorf("%d rounds, want the default 3", rep.Rounds)
	}
	if rep.ColdBy != "drop_caches" && rep.ColdBy != "posix_fadvise" {
		t.Errorf("cold_by %q", rep.ColdBy)
	}
	// The warm rows' cache is the last cold round's: at most the file's
	// extents are collapsed, however many rounds filled the cache before.
	if extents := uint64(size / hugeSize); rep.HugeExtents > extents {
		t.Errorf("%d extents of 2 MiB collapsed in the warm rows' cache, of a file of %d", rep.HugeExtents, extents)
	}
	if n := rep.HugeExtents; n > 0 {
		note := fmt.Sprintf("(%d extents of 2 MiB, %s of %s;", n, fmtBytes(int64(n)*hugeSize), fmtBytes(size))
		if !slices.ContainsFunc(rep.Notes, func(s string) bool { return strings.Contains(s, note) }) {
			t.Errorf("no note says %q: %q", note, rep.Notes)
		}
	}
	if rep.ShmSize != size || !strings.HasPrefix(rep.ShmFile, "/dev/shm/") {
		t.Errorf("shm file %q of %d bytes", rep.ShmFile, rep.ShmSize)
	}
	want := benchRows(1, 2)
	if len(rep.Rows) != len(want) {
		t.Fatalf("%d rows, want %d: %+v", len(rep.Rows), len(want), rep.Rows)
	}
	var checked int64
	for i, row := range rep.Rows {
		w := want[i]
		if row.Case != w[0] || row.Method != w[1] || fmt.Sprint(row.Threads) != w[2] {
			t.Errorf("row %d is %q/%q/%d, want %q/%q/%s", i, row.Case, row.Method, row.Threads, w[0], w[1], w[2])
		}
		if (row.Case != caseShm) != (row.Spread >= 1) {
			t.Errorf("row %d (%s): spread %v over %d rounds", i, row.Case, row.Spread, rep.Rounds)
		}
		random := row.Case == caseRandom || row.Case == caseShm || row.Case == caseRandomWarm
		if row.Seconds <= 0 || row.MBps <= 0 || row.Pages <= 0 || row.Bytes != row.Pages*pageSize {
			t.Errorf("row %d: %+v", i, row)
		}
		if random != (row.FaultsPerSec > 0) || random != (row.Latency != nil) {
			t.Errorf("row %d (%s): faults/s %v, latency %+v", i, row.Case, row.FaultsPerSec, row.Latency)
		}
		if l := row.Latency; l != nil && (l.Touches != int(row.Pages) || l.P50us <= 0 || l.P50us > l.P99us || l.P99us > l.MaxUs) {
			t.Errorf("row %d: latency %+v", i, *l)
		}
		if (row.Method == mapKernel) != (row.SpeedVsKernel == 0) || (row.Method == mapKernel) != (row.TimeVsKernel == 0) {
			t.Errorf("row %d (%s): speed/kernel %v, time/kernel %v", i, row.Method, row.SpeedVsKernel, row.TimeVsKernel)
		}
		if (row.Case == caseSeq && row.Method != methodPread) != (row.SpeedVsPread > 0) {
			t.Errorf("row %d (%s, %s): speed/pread %v", i, row.Case, row.Method, row.SpeedVsPread)
		}
		if row.Method != mapFilemap {
			if row.StoreReads != nil || row.StoreBytes != nil || row.Checked != 0 {
				t.Errorf("%s row %d has store reads or checked bytes: %+v", row.Method, i, row)
			}
			continue
		}
		if row.StoreReads == nil || row.StoreBytes == nil || row.Checked != row.Bytes {
			t.Fatalf("filemap row %d: %+v", i, row)
		}
		if cold := row.Case != caseWarm && row.Case != caseRandomWarm; cold == (*row.StoreReads == 0) {
			t.Errorf("filemap row %q: %d store reads", row.Case, *row.StoreReads)
		}
		if row.Case != caseShm {
			checked += row.Checked * int64(rep.Rounds) // every round checks what it read
		} else {
			checked += row.Checked
		}
	}
	if rep.Checked != checked {
		t.Errorf("checked %d bytes in all, the rows say %d", rep.Checked, checked)
	}
	wantTargets := []string{
		caseSeq + "/speed_vs_kernel", caseSeq + "/speed_vs_pread", caseWarm + "/time_vs_kernel",
		caseRandom + ", 2 threads/speed_vs_kernel", caseRandomWarm + "/p50_us", caseRandomWarm + "/p99_us",
	}
	var got []string
	for _, tg := range rep.Targets {
		got = append(got, tg.Case+"/"+tg.Measure)
		if tg.Value <= 0 || tg.Target == "" {
			t.Errorf("target %+v", tg)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(wantTargets) {
		t.Errorf("targets %q, want %q", got, wantTargets)
	}
	if _, err := os.Stat(rep.File); err == nil {
		t.Errorf("bench left %s behind", rep.File)
	}
	if _, err := os.Stat(rep.ShmFile); err == nil {
		t.Errorf("bench left %s behind", rep.ShmFile)
	}
}

// A FILE of the user's: used as it is, read-only, and left alone.
func TestBenchFile(t *testing.T) {
	path, data := randomFile(t, t.TempDir(), 3<<20+123, 9)
	if err := os.Chmod(path, 0o444); err != nil {
		t.Fatal(err)
	}
	mtime := mtimeOf(t, path)
	r := filemapCLI(t, "bench", "--json", "--threads", "2", "--random-pages", "50", path)
	r.wantCode(t, 0)
	var rep benchReport
	if err := json.Unmarshal(r.stdout, &rep); err != nil {
		t.Fatalf("%v; stdout:\n%s", err, r.stdout)
	}
	if rep.File != path || rep.Generated || rep.Size != int64(len(data)) || rep.RandomPages != 50 || len(rep.Rows) != len(benchRows(2)) {
		t.Errorf("report: file %q generated %v size %d random pages %d, %d rows", rep.File, rep.Generated, rep.Size, rep.RandomPages, len(rep.Rows))
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) || !mtimeOf(t, path).Equal(mtime) {
		t.Errorf("bench changed its FILE (%v)", err)
	}
}

func mtimeOf(t *testing.T, path string) time.Time {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}

func TestBenchMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-file.bin")
	r := filemapCLI(t, "bench", missing)
	r.wantCode(t, 1)
	r.wantStderr(t, missing, "no such file")
	r = filemapCLI(t, "bench", t.TempDir())
	r.wantCode(t, 1)
	r.wantStderr(t, "is a directory")
}

func TestBenchFlags(t *testing.T) {
	file, _ := randomFile(t, t.TempDir(), 4096, 1)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--size", "0"}, "--size 0"},
		{[]string{"--size", "big"}, `invalid value "big" for flag -size`},
		{[]string{"--threads", "0"}, `--threads "0"`},
		{[]string{"--threads", "1,x"}, `--threads "1,x"`},
		{[]string{"--threads", "2,2"}, "2 twice"},
		{[]string{"--random-pages", "-1"}, "--random-pages -1"},
		{[]string{"--rounds", "0"}, "--rounds 0"},
		{[]string{"--frobnicate"}, "flag provided but not defined: -frobnicate"},
		{[]string{"--size", "1M", file}, "--size: only for the generated file"},
		{[]string{"a", "b"}, "want at most one FILE"},
	} {
		r := filemapCLI(t, append([]string{"bench"}, c.args...)...)
		r.wantCode(t, 1)
		r.wantStderr(t, c.want)
	}
	r := filemapCLI(t, "bench", "-h")
	r.wantCode(t, 0)
	r.wantStderr(t, "Usage: filemap bench [flags] [FILE]", "-size", "-dir", "-socket", "-threads", "-random-pages", "-json", "-keep", "-rounds")
}

// Of several rounds, each row is the median round's, with the spread of
// the rounds' times, in the order the rows first appeared.
func TestMedianRows(t *testing.T) {
	row := func(method string, threads int, secs float64) benchRow {
		return benchRow{Case: caseRandom, Method: method, Threads: threads, Seconds: secs}
	}
	rows := []benchRow{
		row("kernel mmap", 1, 3), row("filemap", 1, 9),
		row("kernel mmap", 1, 1), row("filemap", 1, 4),
		row("kernel mmap", 1, 2), row("filemap", 1, 5),
	}
	got := medianRows(rows)
	want := []benchRow{row("kernel mmap", 1, 2), row("filemap", 1, 5)}
	want[0].Spread, want[1].Spread = 3, 9.0/4
	if !slices.Equal(got, want) {
		t.Fatalf("medianRows = %+v, want %+v", got, want)
	}
	if one := medianRows(rows[:2]); one[0].Spread != 0 || one[1].Seconds != 9 {
		t.Errorf("one round: %+v, want the rows as they are", one)
	}
}

// A byte read through the mapping that differs from the file is an error
// naming its offset; so is a short file.
func TestCompareWithFile(t *testing.T) {
	path, data := randomFile(t, t.TempDir(), 3*pageSize+100, 5)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1000) // smaller than a page: the check goes in pieces
	size := int64(len(data))
	if n, err := compareWithFile(data, f, 0, size, buf); err != nil || n != size {
		t.Fatalf("the file's own bytes: %d, %v", n, err)
	}
	for _, bad := range []int64{0, 999, 1000, pageSize + 1, size - 1} {
		mem := bytes.Clone(data)
		mem[bad] ^= 0x10
		_, err := compareWithFile(mem, f, 0, size, buf)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("offset %d ", bad)) || !strings.Contains(err.Error(), path) {
			t.Errorf("byte %d changed: %v", bad, err)
		}
		if bad >= pageSize {
			if _, err := compareWithFile(mem, f, 0, pageSize, buf); err != nil {
				t.Errorf("byte %d changed, first page only: %v", bad, err)
			}
		}
	}
	mem := append(bytes.Clone(data), 1, 2, 3)
	if _, err := compareWithFile(mem, f, 0, int64(len(mem)), buf); err == nil || !strings.Contains(err.Error(), "unexpected EOF") {
		t.Errorf("past the file's end: %v", err)
	}
}

func TestSamplePages(t *testing.T) {
	for _, c := range [][2]int64{{1, 1}, {10, 10}, {1000, 125}, {1 << 20, 4096}} {
		a, b := samplePages(c[0], c[1]), samplePages(c[0], c[1])
		if fmt.Sprint(a) != fmt.Sprint(b) || int64(len(a)) != c[1] {
			t.Errorf("samplePages%v: not the same twice, or %d pages", c, len(a))
		}
		seen := map[int64]bool{}
		for _, p := range a {
			if p < 0 || p >= c[0] || seen[p] {
				t.Fatalf("samplePages%v: page %d out of range or twice", c, p)
			}
			seen[p] = true
		}
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 200; i++ {
		s = append(s, time.Duration(i))
	}
	for q, want := range map[int]time.Duration{50: 100, 99: 198, 100: 200} {
		if got := percentile(s, q); got != want {
			t.Errorf("p%d of 1..200 = %d, want %d", q, got, want)
		}
	}
	if got := percentile(s[:1], 99); got != 1 {
		t.Errorf("p99 of one value = %d", got)
	}
	l := summarise([]time.Duration{3 * time.Microsecond, time.Microsecond, 2 * time.Microsecond})
	if l.Touches != 3 || l.P50us != 2 || l.P99us != 3 || l.MaxUs != 3 {
		t.Errorf("summarise = %+v", *l)
	}
}

// --halt-poll-ns holds for the run, is reported, and is put back after.
func TestBenchHaltPoll(t *testing.T) {
	before := haltPollNs()
	if before == nil {
		r := filemapCLI(t, "bench", "--size", "1M", "--halt-poll-ns", "1000")
		r.wantCode(t, 1)
		r.wantStderr(t, haltPollParam, "no haltpoll cpuidle driver")
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("setting guest_halt_poll_ns needs root")
	}
	want := *before + 1000
	r := filemapCLI(t, "bench", "--size", "1M", "--json", "--threads", "1", "--halt-poll-ns", fmt.Sprint(want))
	r.wantCode(t, 0)
	var rep benchReport
	if err := json.Unmarshal(r.stdout, &rep); err != nil {
		t.Fatalf("%v; stdout:\n%s", err, r.stdout)
	}
	if rep.HaltPollNs == nil || *rep.HaltPollNs != want {
		t.Errorf("report's halt_poll_ns %v, want %d", rep.HaltPollNs, want)
	}
	if after := haltPollNs(); after == nil || *after != *before {
		t.Errorf("guest_halt_poll_ns after the run: %v, want %d back", after, *before)
	}
}
