// bench's report: its rows and targets, as JSON and as the table it prints.

package main

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
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
	faultCounts
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

// benchTarget is one of the goals filemap is built to meet beside the
// kernel's own mmap and a pread loop, and what this run measured.
type benchTarget struct {
	Case    string  `json:"case"`
	Measure string  `json:"measure"` // a row field: speed_vs_kernel, time_vs_kernel, speed_vs_pread, p50_us, p99_us
	Value   float64 `json:"value"`
	Target  string  `json:"target"` // e.g. ">= 1.5"
	Met     bool    `json:"met"`

	atLeast bool    // the goal is a floor, else a ceiling
	limit   float64 // the floor or ceiling
}

// goal says in words what the target asks of filemap's row.
func (t benchTarget) goal() string {
	op := "≤"
	if t.atLeast {
		op = "≥"
	}
	switch t.Measure {
	case "speed_vs_kernel":
		return fmt.Sprintf("speed %s %g× the kernel mmap's", op, t.limit)
	case "time_vs_kernel":
		return fmt.Sprintf("time %s %g× the kernel mmap's", op, t.limit)
	case "speed_vs_pread":
		return fmt.Sprintf("speed %s %g× the pread loop's", op, t.limit)
	case "p50_us":
		return fmt.Sprintf("p50 latency %s %gµs", op, t.limit)
	case "p99_us":
		return fmt.Sprintf("p99 latency %s %gµs", op, t.limit)
	}
	return fmt.Sprintf("%s %s %g", t.Measure, op, t.limit)
}

// measured is the target's value in the goal's terms.
func (t benchTarget) measured() string {
	if strings.HasSuffix(t.Measure, "_us") {
		return fmtMicros(t.Value)
	}
	return fmt.Sprintf("%.2f×", t.Value)
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
	// background collapses; HugeExtents is how many 2 MiB extents of the
	// cache they map it had collapsed by then: those of the last cold
	// round's.
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

// rate is the row's throughput: faults a second on the random rows, else
// megabytes (10^6 bytes) a second.
func (row *benchRow) rate() string {
	if row.FaultsPerSec > 0 {
		return fmt.Sprintf("%.0f faults/s", row.FaultsPerSec)
	}
	return fmt.Sprintf("%.0f MB/s", row.MBps)
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

// ratios relates each row to the kernel's and the pread loop's rows of
// its case.
func (r *benchReport) ratios() {
	rows := r.Rows
	find := func(c, method string, threads int) *benchRow {
		for i := range rows {
			if rows[i].Case == c && rows[i].Method == method && rows[i].Threads == threads {
				return &rows[i]
			}
		}
		return nil
	}
	for i := range rows {
		row := &rows[i]
		if k := find(row.Case, mapKernel, row.Threads); k != nil && row.Method != mapKernel && k.MBps > 0 && k.Seconds > 0 {
			row.SpeedVsKernel, row.TimeVsKernel = row.MBps/k.MBps, row.Seconds/k.Seconds
		}
		if p := find(row.Case, methodPread, row.Threads); p != nil && row.Method != methodPread && p.MBps > 0 {
			row.SpeedVsPread = row.MBps / p.MBps
		}
	}
}

// targets compares the filemap rows with filemap's goals: a cold
// sequential scan faster than the kernel's mmap and near a pread loop, a
// warm one near the kernel's, random cold faults at its rate, and warm
// ones served in microseconds.
func (r *benchReport) targets() {
	r.Targets = []benchTarget{}
	add := func(c string, threads int, measure string, atLeast bool, limit float64) {
		var row *benchRow
		for i := range r.Rows {
			if x := &r.Rows[i]; x.Case == c && x.Method == mapFilemap && x.Threads == threads {
				row = x
			}
		}
		if row == nil {
			return
		}
		var v float64
		switch measure {
		case "speed_vs_kernel":
			v = row.SpeedVsKernel
		case "time_vs_kernel":
			v = row.TimeVsKernel
		case "speed_vs_pread":
			v = row.SpeedVsPread
		case "p50_us":
			v = row.Latency.P50us
		case "p99_us":
			v = row.Latency.P99us
		}
		t := benchTarget{Case: c, Measure: measure, Value: v, Target: fmt.Sprintf("<= %g", limit), Met: v <= limit, atLeast: atLeast, limit: limit}
		if atLeast {
			t.Target, t.Met = fmt.Sprintf(">= %g", limit), v >= limit
		}
		if threads > 1 {
			t.Case = fmt.Sprintf("%s, %d threads", c, threads)
		}
		r.Targets = append(r.Targets, t)
	}
	add(caseSeq, 1, "speed_vs_kernel", true, 1.5)
	add(caseSeq, 1, "speed_vs_pread", true, 0.8)
	add(caseWarm, 1, "time_vs_kernel", false, 1.3)
	t := slices.Max(r.Threads)
	if slices.Contains(r.Threads, 2) {
		t = 2
	}
	add(caseRandom, t, "speed_vs_kernel", true, 1.0)
	add(caseRandomWarm, 1, "p50_us", false, 20)
	add(caseRandomWarm, 1, "p99_us", false, 100)
}

func (r *benchReport) printTable(w io.Writer) error {
	what := "yours, read-only"
	if r.Generated {
		what = "generated"
	}
	fmt.Fprintf(w, "filemap bench: %s (%s), %s, %d pages; handler: %s\n", r.File, what, fmtSize(r.Size), r.Pages, r.Handler)
	fmt.Fprintf(w, "cold: %s before each cold row, and filemap.DropCaches; random: %d pages, threads %s", r.ColdBy, r.RandomPages, joinInts(r.Threads))
	if r.ShmFile != "" {
		fmt.Fprintf(w, "; /dev/shm: the first %s", fmtSize(r.ShmSize))
	}
	if r.HaltPollNs != nil {
		fmt.Fprintf(w, "; guest_halt_poll_ns %d", *r.HaltPollNs)
	}
	fmt.Fprint(w, "\n\n")

	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "case\tmethod\tthreads\tpages\ttime\tspread\trate\tspeed/kernel\ttime/kernel\tspeed/pread\tmajor faults\tminor faults\tstore reads\t")
	ratio := func(v float64) string {
		if v == 0 {
			return ""
		}
		return fmt.Sprintf("%.2fx", v)
	}
	for _, row := range r.Rows {
		reads := "-"
		if row.StoreReads != nil {
			reads = fmt.Sprint(*row.StoreReads)
		}
		spread := ""
		if row.Spread > 0 {
			spread = fmt.Sprintf("%.2fx", row.Spread)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t\n", row.Case, row.Method, row.Threads, row.Pages,
			fmtDuration(time.Duration(row.Seconds*float64(time.Second))), spread, row.rate(),
			ratio(row.SpeedVsKernel), ratio(row.TimeVsKernel), ratio(row.SpeedVsPread), row.MajorFaults, row.MinorFaults, reads)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprint(w, "\nfault service latency: time.Now around each single-byte load\n\n")
	fmt.Fprintln(tw, "case\tmethod\tthreads\ttouches\tp50\tp99\tmax\t")
	for _, row := range r.Rows {
		if l := row.Latency; l != nil {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t\n", row.Case, row.Method, row.Threads, l.Touches, fmtMicros(l.P50us), fmtMicros(l.P99us), fmtMicros(l.MaxUs))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprint(w, "\ntargets: what filemap aims for beside the kernel's own mmap and a pread loop\n\n")
	for _, t := range r.Targets {
		met := "missed"
		if t.Met {
			met = "met"
		}
		fmt.Fprintf(tw, "%s\tfilemap's %s\t%s\t%s\t\n", t.Case, t.goal(), t.measured(), met)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nspeed/kernel: throughput over the kernel mmap row's (above 1 is faster); time/kernel: its inverse")
	if r.Rounds > 1 {
		fmt.Fprintf(w, "rows but /dev/shm: the median of %d rounds, the methods interleaved; spread: the slowest round's time over the fastest's\n", r.Rounds)
	}
	fmt.Fprintln(w, "faults: getrusage(RUSAGE_SELF) on kernel and pread rows; the handler's counters on filemap rows")
	fmt.Fprintln(w, "fill path: filemap's fill path alone, the floor of its cold row: O_DIRECT reads of 1 MiB, two in flight, each written into a new memfd")
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	fmt.Fprintf(w, "checked against pread of the file: %d bytes read through filemap\n", r.Checked)
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
