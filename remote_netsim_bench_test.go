package filemap

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/filemap/filemap/internal/netsim"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/testutil"
)

// What the remote benchmark does beside its 1 GiB objects.
const (
	// The parallel download is timed with remoteSweepMin to
	// remoteSweepMax parts in flight, doubling; the best is the baseline.
	remoteSweepMin, remoteSweepMax = 4, 64
	// remoteTTFBTries is how many times a first page is timed.
	remoteTTFBTries = 5
	// remoteFaults is how many random pages each thread count faults in,
	// and how many 4 KiB GETs the same threads make.
	remoteFaults = 240
	// remoteLoaderThreads copy a checkpoint's tensors.
	remoteLoaderThreads = 2
)

// BenchmarkRemote runs, under each network profile of internal/netsim
// (versitygw behind toxiproxy in a network namespace, over a veth capped by
// tbf; root only), side by side in one run, each case against its
// baseline through the same SDK and network:
//
//   - a cold scan of a 1 GiB object through a mapping, by `filemap cat` and
//     by a first-touch loop over a mapping, against one GET of the object
//     and against the best of parallel ranged downloads (8 MiB parts, 4 to
//     64 in flight);
//   - time to first byte: Open and a load of the first page, against a
//     4 KiB ranged GET;
//   - random 4 KiB faults from 1 and from 8 threads, p50 and p99, against
//     4 KiB ranged GETs from as many threads;
//   - a checkpoint laid out as safetensors (195 tensors of 4 KiB to 62.5
//     MiB) read tensor by tensor in header order by 2 threads, each copied
//     into a buffer of its own, against the best parallel download of it.
//
// Each filemap case has a `filemap serve` of its own, started cold, whose
// metrics are sampled (requests in flight over time) and whose CPU profile
// is kept; where a target is missed, both are shown. The profiles stay in
// FILEMAP_BENCH_REMOTE_OUT (default: a new temporary directory, named in
// the log). FILEMAP_BENCH_REMOTE_SIZE sets the objects' size (default 1G);
// -benchtime Nx runs N rounds; -bench Remote/far runs one profile. While
// iterating, FILEMAP_BENCH_REMOTE_FLAGS adds flags to every daemon (split
// at spaces: "--remote-parallel 16") and FILEMAP_BENCH_REMOTE_CASES runs
// only the filemap cases it names (comma-separated: cat, scan, first-byte,
// faults, checkpoint), with the baselines they are compared to.
func BenchmarkRemote(b *testing.B) {
	profiles := netsim.Profiles()
	sim := netsim.StartTest(b, profiles[0])
	size := int64(1 << 30)
	if s := os.Getenv("FILEMAP_BENCH_REMOTE_SIZE"); s != "" {
		size = parseBenchSize(s)
	}
	objs := putRemoteBenchObjects(b, sim, size)
	bin := buildFilemapCLI(b)
	out := os.Getenv("FILEMAP_BENCH_REMOTE_OUT")
	if out == "" {
		var err error
		if out, err = os.MkdirTemp("", "filemap-bench-remote-"); err != nil {
			b.Fatal(err)
		}
	} else if err := os.MkdirAll(out, 0o755); err != nil {
		b.Fatalf("FILEMAP_BENCH_REMOTE_OUT: %v", err)
	}
	b.Logf("objects of %d MiB; daemons' CPU profiles in %s", size>>20, out)
	for _, p := range profiles {
		b.Run(p.Name, func(b *testing.B) {
			r := newRemoteBench(b, sim, p, objs, bin, out)
			for b.Loop() {
				r.round()
			}
			r.report()
		})
	}
}

// remoteObjects are the benchmark's objects in the simulated store.
type remoteObjects struct {
	bucket          string
	key, modelKey   string
	size, modelSize int64
	crc             uint32 // of the object at key
}

func (o remoteObjects) uri() string      { return "s3://" + o.bucket + "/" + o.key }
func (o remoteObjects) modelURI() string { return "s3://" + o.bucket + "/" + o.modelKey }

// putRemoteBenchObjects puts an object of size bytes of the test pattern,
// and a checkpoint of about that size, around the toxics.
func putRemoteBenchObjects(b *testing.B, sim *netsim.Sim, size int64) remoteObjects {
	o := remoteObjects{bucket: sim.Store.NewBucket(b, false), key: "bench/object.bin", modelKey: "bench/model.safetensors", size: size}
	dir := b.TempDir()
	path, model := filepath.Join(dir, "object"), filepath.Join(dir, "model")
	pattern.WriteFile(b, path, size)
	o.modelSize = writeCheckpoint(b, model, size)
	o.crc = fileCRC(b, path)
	putFile(b, sim.Store.Client, o.bucket, o.key, path)
	putFile(b, sim.Store.Client, o.bucket, o.modelKey, model)
	return o
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func fileCRC(b *testing.B, path string) uint32 {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := crc32.New(castagnoli)
	if _, err := io.Copy(h, f); err != nil {
		b.Fatal(err)
	}
	return h.Sum32()
}

// putFile puts the file at path as bucket/key, streamed from the file.
func putFile(b testing.TB, c *s3.Client, bucket, key, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		b.Fatal(err)
	}
	_, err = c.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: f, ContentLength: aws.Int64(st.Size())})
	if err != nil {
		b.Fatalf("put s3://%s/%s (%d bytes): %v", bucket, key, st.Size(), err)
	}
}

// remoteBench is one profile's run: its rounds' times, summed.
type remoteBench struct {
	b       *testing.B
	sim     *netsim.Sim
	p       netsim.Profile
	net     netsim.Figures
	o       remoteObjects
	bin     string
	out     string
	client  *s3.Client // of the simulated store, with a connection for every part in flight
	rounds  int
	timings remoteTimings
	// cases are the daemons' records by case: the last round's samples
	// and every round's profile.
	cases map[string]*remoteCase
}

type remoteTimings struct {
	single        time.Duration
	parallel      map[int]time.Duration // by parts in flight
	toMemory      time.Duration         // at each round's best parts in flight
	cat, scan     time.Duration
	ttfb, get4K   []time.Duration
	faults, gets  map[int][]time.Duration // by threads
	model         time.Duration
	modelWarm     time.Duration // the same load again, every page cached: the loader's own copying
	catWarm       time.Duration // cat again, every page cached: its copies and the pipe
	modelDownload time.Duration // at each round's best parts in flight
}

type remoteCase struct {
	samples  []metricSample
	profiles []string
}

func newRemoteBench(b *testing.B, sim *netsim.Sim, p netsim.Profile, o remoteObjects, bin, out string) *remoteBench {
	ctx := context.Background()
	if err := sim.Set(ctx, p); err != nil {
		b.Fatal(err)
	}
	// The network's own figures, before anything uses it.
	f, err := sim.Measure(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%s\nmeasured: %s\nload: %s", p, f, loadAverage())
	if err := f.Check(p, 0.25); err != nil {
		b.Logf("warning: the network strays from its profile: %v", err)
	}
	return &remoteBench{b: b, sim: sim, p: p, net: f, o: o, bin: bin, out: out, client: sim.Client(remoteSweepMax),
		timings: remoteTimings{parallel: map[int]time.Duration{}, faults: map[int][]time.Duration{}, gets: map[int][]time.Duration{}},
		cases:   map[string]*remoteCase{}}
}

// loadAverage is the first line of /proc/loadavg: the machine is shared.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// round runs every case once (those FILEMAP_BENCH_REMOTE_CASES names).
func (r *remoteBench) round() {
	b, o, t := r.b, r.o, &r.timings
	r.rounds++
	b.Logf("%s round %d: load %s", r.p.Name, r.rounds, loadAverage())
	mb := func(n int64, d time.Duration) string { return fmt.Sprintf("%.0f MB/s", float64(n)/1e6/d.Seconds()) }

	scans := runs("cat") || runs("scan")
	var single time.Duration
	if scans {
		single = timeGet(b, r.client, o.bucket, o.key, o.size, 1)
		t.single += single
	}
	best, bestN := time.Duration(0), 0
	if scans || runs("checkpoint") {
		for n := remoteSweepMin; n <= remoteSweepMax; n *= 2 {
			d := timeGet(b, r.client, o.bucket, o.key, o.size, n)
			t.parallel[n] += d
			if bestN == 0 || d < best {
				best, bestN = d, n
			}
		}
		b.Logf("%s round %d: best parallel %s (%d in flight)", r.p.Name, r.rounds, mb(o.size, best), bestN)
	}
	if scans {
		t.toMemory += timeGetInto(b, r.client, o.bucket, o.key, o.size, bestN, false)
		var cat, catWarm, scan time.Duration
		var catBusy float64
		if runs("cat") {
			cat, catWarm, catBusy = r.catCase()
			t.cat += cat
			t.catWarm += catWarm
		}
		if runs("scan") {
			scan = r.scanCase()
			t.scan += scan
		}
		b.Logf("%s round %d: single GET %s; cat %s (%.2f× best; warm %s; the CPUs %.0f%% busy cold); scan %s (%.2f× best)", r.p.Name, r.rounds,
			mb(o.size, single), mb(o.size, cat), best.Seconds()/cat.Seconds(), mb(o.size, catWarm), 100*catBusy, mb(o.size, scan), best.Seconds()/scan.Seconds())
	}
	if runs("first-byte") {
		ttfb := r.ttfbCase()
		t.ttfb = append(t.ttfb, ttfb...)
		get4K := smallGets(b, r.client, o.bucket, o.key, o.size, 4*remoteTTFBTries)
		t.get4K = append(t.get4K, get4K...)
		b.Logf("%s round %d: first byte %v (GET 4K %v)", r.p.Name, r.rounds,
			median(ttfb).Round(10*time.Microsecond), median(get4K).Round(10*time.Microsecond))
	}
	if runs("faults") {
		var faults []string
		for _, threads := range []int{1, 8} {
			f := r.faultsCase(threads)
			var g []time.Duration
			if threads == 1 {
				g = smallGets(b, r.client, o.bucket, o.key, o.size, remoteFaults)
			} else {
				g = parallelSmallGets(b, r.client, o.bucket, o.key, o.size, threads, remoteFaults/threads)
			}
			t.faults[threads], t.gets[threads] = append(t.faults[threads], f...), append(t.gets[threads], g...)
			faults = append(faults, fmt.Sprintf("%d thread(s) fault p50/p99 %v/%v (GET %v/%v)", threads,
				median(f).Round(10*time.Microsecond), percentile(f, 99).Round(10*time.Microsecond),
				median(g).Round(10*time.Microsecond), percentile(g, 99).Round(10*time.Microsecond)))
		}
		b.Logf("%s round %d: random faults: %s", r.p.Name, r.rounds, strings.Join(faults, "; "))
	}
	if runs("checkpoint") {
		var modelDownload time.Duration
		downloadBusy := cpuBusy(b, func() { modelDownload = timeGet(b, r.client, o.bucket, o.modelKey, o.modelSize, bestN) })
		t.modelDownload += modelDownload
		model, warm, modelBusy := r.modelCase()
		t.model += model
		t.modelWarm += warm
		b.Logf("%s round %d: checkpoint %s (%.2f× its best download, %s); warm %s; the CPUs %.0f%% busy during the cold load, %.0f%% during the download",
			r.p.Name, r.rounds, mb(o.modelSize, model), modelDownload.Seconds()/model.Seconds(), mb(o.modelSize, modelDownload), mb(o.modelSize, warm),
			100*modelBusy, 100*downloadBusy)
	}
}

// daemon starts a cold daemon for case name, pointed at the simulated
// store, its profile named after the profile, case and round.
func (r *remoteBench) daemon(name string) *cliDaemon {
	prof := filepath.Join(r.out, fmt.Sprintf("%s-%s-%d.prof", r.p.Name, name, r.rounds))
	return startCLIDaemon(r.b, r.bin, r.sim.Env(), prof, strings.Fields(os.Getenv("FILEMAP_BENCH_REMOTE_FLAGS"))...)
}

// runs says whether case name is to run: FILEMAP_BENCH_REMOTE_CASES names
// it, or is unset.
func runs(name string) bool {
	cases := os.Getenv("FILEMAP_BENCH_REMOTE_CASES")
	return cases == "" || slices.Contains(strings.Split(cases, ","), name)
}

// done stops the daemon of case name and keeps its record.
func (r *remoteBench) done(name string, d *cliDaemon) {
	c := r.cases[name]
	if c == nil {
		c = &remoteCase{}
		r.cases[name] = c
	}
	c.samples = d.stop(r.b)
	c.profiles = append(c.profiles, d.profile)
}

// catCase times `filemap cat` of the object, from its start to its exit,
// and checks what it wrote.
func (r *remoteBench) catCase() (cold, warm time.Duration, busy float64) {
	d := r.daemon("cat")
	defer r.done("cat", d)
	busy = cpuBusy(r.b, func() { cold = r.cat(d) })
	return cold, r.cat(d), busy
}

// cat times one `filemap cat` of the object through d, its output piped
// to this process and checked.
func (r *remoteBench) cat(d *cliDaemon) time.Duration {
	b := r.b
	cmd := exec.Command(r.bin, "cat", "--socket", d.socket, r.o.uri())
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	h := crc32.New(castagnoli)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(h, stdout)
	if werr := cmd.Wait(); err == nil {
		err = werr
	}
	elapsed := time.Since(start)
	if err != nil || n != r.o.size || h.Sum32() != r.o.crc {
		b.Fatalf("filemap cat %s: %d bytes of CRC %#x, %v; want %d of %#x", r.o.uri(), n, h.Sum32(), err, r.o.size, r.o.crc)
	}
	return elapsed
}

// scanCase times Open and a first touch of every page of the object,
// then checks a word of every page.
func (r *remoteBench) scanCase() time.Duration {
	b := r.b
	d := r.daemon("scan")
	defer r.done("scan", d)
	start := time.Now()
	m, err := Open(context.Background(), r.o.uri(), WithSocket(d.socket))
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	touchAll(m.Bytes())
	elapsed := time.Since(start)
	checkPages(b, m, nil)
	return elapsed
}

// checkPages checks the first word of each of pages of m (nil: all)
// against the pattern.
func checkPages(b testing.TB, m *Mapping, pages []int64) {
	mem := m.Bytes()
	check := func(p int64) {
		if got, want := binary.LittleEndian.Uint64(mem[p*ps:]), pattern.Word(p*ps); got != want {
			b.Fatalf("%s: word at offset %d is %#x, want %#x", m.name, p*ps, got, want)
		}
	}
	if pages != nil {
		for _, p := range pages {
			check(p)
		}
		return
	}
	for p := range int64(len(mem)) / ps {
		check(p)
	}
}

// ttfbCase times Open and a load of the first page of the object,
// remoteTTFBTries times, the daemon's cache dropped before each.
func (r *remoteBench) ttfbCase() []time.Duration {
	b := r.b
	d := r.daemon("first-byte")
	defer r.done("first-byte", d)
	ctx := context.Background()
	lat := make([]time.Duration, remoteTTFBTries)
	for i := range lat {
		if err := DropCaches(ctx, WithSocket(d.socket)); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		m, err := Open(ctx, r.o.uri(), WithSocket(d.socket))
		if err != nil {
			b.Fatal(err)
		}
		var first uint64
		err = m.Guard(func() { first = binary.LittleEndian.Uint64(m.Bytes()) })
		lat[i] = time.Since(start)
		m.Close()
		if err != nil || first != pattern.Word(0) {
			b.Fatalf("%s: first word %#x, %v; want %#x", r.o.uri(), first, err, pattern.Word(0))
		}
	}
	return lat
}

// faultsCase times first touches of remoteFaults random pages of the
// object, mapped with Random advice, split among threads.
func (r *remoteBench) faultsCase(threads int) []time.Duration {
	b := r.b
	name := fmt.Sprintf("faults-%d", threads)
	d := r.daemon(name)
	defer r.done(name, d)
	m, err := Open(context.Background(), r.o.uri(), WithSocket(d.socket), WithAdvice(Random))
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	pages := benchPages(r.o.size)
	pages = pages[:min(remoteFaults, len(pages))]
	lat := make([]time.Duration, len(pages))
	touchPages(b, m.Bytes(), pages, threads, lat)
	checkPages(b, m, pages)
	return lat
}

// modelCase times Open of the checkpoint and the load of every tensor,
// and then the same load again with every page cached: what the loader's
// copies into new buffers cost, which the cold load cannot beat. busy is
// how busy the machine's CPUs were during the cold load.
func (r *remoteBench) modelCase() (cold, warm time.Duration, busy float64) {
	b := r.b
	d := r.daemon("checkpoint")
	defer r.done("checkpoint", d)
	var m *Mapping
	busy = cpuBusy(b, func() {
		start := time.Now()
		var err error
		if m, err = Open(context.Background(), r.o.modelURI(), WithSocket(d.socket)); err != nil {
			b.Fatal(err)
		}
		if cold, _, err = loadCheckpoint(m, start, remoteLoaderThreads); err != nil {
			m.Close()
			b.Fatal(err)
		}
	})
	defer m.Close()
	// The tensors' buffers are garbage now: give their memory back
	// before the next load, and the next case.
	freeMemory := func() {
		runtime.GC()
		debug.FreeOSMemory()
	}
	freeMemory()
	var err error
	if warm, _, err = loadCheckpoint(m, time.Now(), remoteLoaderThreads); err != nil {
		b.Fatal(err)
	}
	freeMemory()
	return cold, warm, busy
}

// cpuBusy runs f and returns how busy the machine's CPUs were meanwhile,
// from 0 to 1: all of them, whoever used them.
func cpuBusy(b *testing.B, f func()) float64 {
	before, start := testutil.MachineBusy(b), time.Now()
	f()
	busy, elapsed := testutil.MachineBusy(b)-before, time.Since(start)
	return busy.Seconds() / (elapsed.Seconds() * float64(runtime.NumCPU()))
}

// remoteRatio is one of the ratios the remote targets are written in, and
// the cases whose daemons say what bounds it.
type remoteRatio struct {
	unit  string // its metric
	what  string
	ratio float64
	cases []string
}

// remoteTarget is a target of a ratio under a profile.
type remoteTarget struct {
	want    float64
	atLeast bool // the ratio must be at least want; else at most
}

// remoteTargets are the targets of a profile, by ratio.
func remoteTargets(profile string) map[string]remoteTarget {
	return map[string]map[string]remoteTarget{
		"region": {
			"cat/best-parallel":        {0.9, true},
			"scan/best-parallel":       {0.9, true},
			"cat/single-GET":           {5, true},
			"scan/single-GET":          {5, true},
			"first-byte/GET-4K":        {2, false},
			"fault-p50/GET-p50-1t":     {1.2, false},
			"fault-p50/GET-p50-8t":     {1.2, false},
			"checkpoint/best-parallel": {0.85, true},
		},
		"far": {
			"cat/best-parallel":        {0.85, true},
			"scan/best-parallel":       {0.85, true},
			"checkpoint/best-parallel": {0.8, true},
		},
	}[profile]
}

func (t remoteTarget) met(ratio float64) bool {
	if t.atLeast {
		return ratio >= t.want
	}
	return ratio <= t.want
}

// report reports the rounds' figures and ratios as metrics, and the ratios
// beside their targets as a table; for each target missed, the requests in
// flight over the last round's case and the top of its daemons' CPU
// profiles.
func (r *remoteBench) report() {
	b, t, o := r.b, &r.timings, r.o
	n := float64(r.rounds)
	rate := func(bytes int64, d time.Duration) float64 { return float64(bytes) * n / 1e6 / d.Seconds() }
	bestN := 0
	for k, d := range t.parallel {
		if bestN == 0 || d < t.parallel[bestN] || (d == t.parallel[bestN] && k < bestN) {
			bestN = k
		}
	}
	best := t.parallel[bestN]
	b.ReportMetric(r.net.GET4K.Seconds()*1e3, "net-GET-4K-ms")
	b.ReportMetric(r.net.ConnRate/1e6, "net-conn-MB/s")
	b.ReportMetric(r.net.LinkRate/1e6, "net-16-conns-MB/s")
	b.ReportMetric(rate(o.size, t.single), "single-GET-MB/s")
	for k := remoteSweepMin; k <= remoteSweepMax; k *= 2 {
		b.ReportMetric(rate(o.size, t.parallel[k]), fmt.Sprintf("parallel-%d-MB/s", k))
	}
	b.ReportMetric(float64(bestN), "best-parallel-parts")
	b.ReportMetric(rate(o.size, t.toMemory), "best-parallel-to-memory-MB/s")
	b.ReportMetric(rate(o.size, t.cat), "cat-MB/s")
	b.ReportMetric(rate(o.size, t.catWarm), "cat-warm-MB/s")
	b.ReportMetric(rate(o.size, t.scan), "scan-MB/s")
	b.ReportMetric(rate(o.modelSize, t.model), "checkpoint-MB/s")
	b.ReportMetric(rate(o.modelSize, t.modelWarm), "checkpoint-warm-MB/s")
	b.ReportMetric(rate(o.modelSize, t.modelDownload), "checkpoint-download-MB/s")
	ms := func(d time.Duration) float64 { return d.Seconds() * 1e3 }
	ratios := []remoteRatio{
		{"cat/best-parallel", "cold scan, filemap cat / best parallel download", best.Seconds() / t.cat.Seconds(), []string{"cat"}},
		{"scan/best-parallel", "cold scan, mapped loop / best parallel download", best.Seconds() / t.scan.Seconds(), []string{"scan"}},
		{"cat/single-GET", "cold scan, filemap cat / single GET", t.single.Seconds() / t.cat.Seconds(), []string{"cat"}},
		{"scan/single-GET", "cold scan, mapped loop / single GET", t.single.Seconds() / t.scan.Seconds(), []string{"scan"}},
	}
	if len(t.ttfb) > 0 {
		ttfb, get4K := median(t.ttfb), median(t.get4K)
		b.ReportMetric(ms(ttfb), "first-byte-ms")
		b.ReportMetric(ms(get4K), "GET-4K-ms")
		ratios = append(ratios, remoteRatio{"first-byte/GET-4K", "time to first byte / 4 KiB GET", ttfb.Seconds() / get4K.Seconds(), []string{"first-byte"}})
	}
	for _, threads := range []int{1, 8} {
		f, g := t.faults[threads], t.gets[threads]
		if len(f) == 0 {
			continue
		}
		b.ReportMetric(ms(median(f)), fmt.Sprintf("fault-p50-ms-%dt", threads))
		b.ReportMetric(ms(percentile(f, 99)), fmt.Sprintf("fault-p99-ms-%dt", threads))
		b.ReportMetric(ms(median(g)), fmt.Sprintf("GET-4K-p50-ms-%dt", threads))
		b.ReportMetric(ms(percentile(g, 99)), fmt.Sprintf("GET-4K-p99-ms-%dt", threads))
		ratios = append(ratios, remoteRatio{fmt.Sprintf("fault-p50/GET-p50-%dt", threads),
			fmt.Sprintf("random 4 KiB fault p50 / ranged GET p50, %d thread(s)", threads),
			median(f).Seconds() / median(g).Seconds(), []string{fmt.Sprintf("faults-%d", threads)}})
		ratios = append(ratios, remoteRatio{fmt.Sprintf("fault-p99/GET-p99-%dt", threads),
			fmt.Sprintf("random 4 KiB fault p99 / ranged GET p99, %d thread(s)", threads),
			percentile(f, 99).Seconds() / percentile(g, 99).Seconds(), []string{fmt.Sprintf("faults-%d", threads)}})
	}
	ratios = append(ratios, remoteRatio{"checkpoint/best-parallel", "checkpoint load / its best parallel download",
		t.modelDownload.Seconds() / t.model.Seconds(), []string{"checkpoint"}})
	ratios = slices.DeleteFunc(ratios, func(x remoteRatio) bool { return math.IsNaN(x.ratio) || math.IsInf(x.ratio, 0) || x.ratio == 0 })
	for _, x := range ratios {
		b.ReportMetric(x.ratio, x.unit)
	}
	b.ReportMetric(0, "ns/op")
	r.logTargets(ratios)
}

// logTargets logs the ratios beside their targets as a table and, for
// each target missed, what its cases' daemons show.
func (r *remoteBench) logTargets(ratios []remoteRatio) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s; %d round(s); load %s\n", r.p, r.rounds, loadAverage())
	fmt.Fprintf(&sb, "| %-58s | %7s | %8s |        |\n", "what", "ratio", "target")
	var missed []string
	for _, x := range ratios {
		target, verdict := "", ""
		if tg, ok := remoteTargets(r.p.Name)[x.unit]; ok {
			op := "≤"
			if tg.atLeast {
				op = "≥"
			}
			target, verdict = fmt.Sprintf("%s %.2f×", op, tg.want), "met"
			if !tg.met(x.ratio) {
				verdict = "MISSED"
				for _, c := range x.cases {
					if !slices.Contains(missed, c) {
						missed = append(missed, c)
					}
				}
			}
		}
		fmt.Fprintf(&sb, "| %-58s | %6.2f× | %8s | %-6s |\n", x.what, x.ratio, target, verdict)
	}
	for _, name := range slices.Sorted(maps.Keys(r.cases)) {
		fmt.Fprintf(&sb, "daemon of %s (last round): %s\n", name, inflightSummary(r.cases[name].samples))
	}
	r.b.Log(sb.String())
	for _, name := range missed {
		r.b.Logf("%s: the daemon's CPU, all rounds (go tool pprof -top -cum):\n%s", name, r.profileTop(r.cases[name].profiles))
	}
}

// profileTop is the top of the merged profiles, by cumulative time, or why
// there is none.
func (r *remoteBench) profileTop(profiles []string) string {
	args := append([]string{"tool", "pprof", "-top", "-cum", "-nodecount=30", r.bin}, profiles...)
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("go tool pprof: %v\n%s", err, out)
	}
	return string(out)
}

// percentile is the p'th percentile of d.
func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)*p/100, len(s)-1)]
}
