package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/filemap/filemap/internal/netsim"
	"github.com/filemap/filemap/internal/pattern"
	"github.com/filemap/filemap/internal/seaweedtest"
	"github.com/filemap/filemap/internal/syncbuf"
	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/store/remote"
)

// The fleet: hosts, each a `filemap serve` with its own socket, page cache
// and disk cache, mapping one object of a distributed store.
const (
	fleetHosts  = 3
	fleetObject = 1 << 30
	// fleetTimeout bounds the test's every process: a scan of the object by
	// every host at once, on two shared CPUs, through a simulated network.
	fleetTimeout = 15 * time.Minute
)

// A fleet on a distributed store, as in production: three daemons as three
// hosts, each behind its own network to the S3 gateway of a SeaweedFS
// cluster (three volume servers, replication 001) with the region profile
// (internal/netsim: 10 ms added to each response, 50 MB/s a connection,
// 300 MB/s its link), map the same 1 GiB object, pinned to its first
// version while the key has moved on. Each host scans it with `filemap
// cat`, all at once, and while they scan, the volume server with the most
// volumes fails. Every scan completes, no page gets SIGBUS, every byte on
// every host is the version's, and each host fetched each chunk of it
// once. The aggregate throughput is logged, and where the CPU went.
//
// The server fails in two ways. It crashes (SIGKILL): the gateway finds
// its connections reset and new ones refused, and reads the other copy
// within the same request; the daemons run with the defaults. Or it hangs
// (SIGSTOP): its connections stay open and nothing answers, and the
// gateway goes on to the other copy only when a read has waited 30 s for
// its response headers (a constant of the gateway's); the daemons run with
// --remote-timeout above that, so that the gateway's wait ends first: a
// read its client gives up earlier teaches the gateway nothing, and the
// retry waits on the hung server again.
//
// It is a scale test, not in CI: it skips unless $FILEMAP_SEAWEEDFS names
// a weed binary (scripts/seaweedfs.sh install), and when not root (the
// simulated networks are network namespaces).
func TestFleetSeaweedFS(t *testing.T) {
	for _, c := range []struct {
		name  string
		fail  func(*seaweedtest.Server) error
		flags []string
	}{
		{"crash", func(s *seaweedtest.Server) error { s.Kill(); return nil }, nil},
		{"hang", (*seaweedtest.Server).Stop, []string{"--remote-timeout", "40s"}},
	} {
		t.Run(c.name, func(t *testing.T) { testFleet(t, c.fail, c.flags) })
	}
}

// testFleet runs the fleet test: fail makes a volume server fail in the
// middle of the scans, and the daemons run with flags.
func testFleet(t *testing.T, fail func(*seaweedtest.Server) error, flags []string) {
	sw := seaweedtest.Start(t)
	region, err := netsim.ProfileNamed("region")
	if err != nil {
		t.Fatal(err)
	}
	routes := make([]*netsim.Route, fleetHosts)
	for i := range routes {
		routes[i] = netsim.StartRouteTest(t, region, sw.Port)
	}
	const bucket, key = "fleet", "models/weights.bin"
	sw.CreateBucket(t, bucket)
	version := putPattern(t, sw.Client, bucket, key, fleetObject)
	putBytes(t, sw.Client, bucket, key, pattern.Random(1<<20, 18)) // the key moves on; the hosts map the first version
	uri := "s3://" + bucket + "/" + key

	hosts := make([]*fleetHost, fleetHosts)
	for i := range hosts {
		hosts[i] = startFleetHost(t, sw, routes[i].Endpoint, flags)
	}
	cpu := newCPUMeter(t, hosts, sw)
	start := time.Now()
	for _, h := range hosts {
		h.scan(t, uri, version, start)
	}
	victim, failed, progress := failMidScan(t, sw, hosts, fail)
	var slowest time.Duration
	for i, h := range hosts {
		h.wait(t, i)
		slowest = max(slowest, h.took)
	}
	t.Logf("%s failed at %s of the scans; the gateway logged %d reads from it that failed",
		failed, progress, strings.Count(sw.Filer.Log(), "read http://"+victim.Addr+"/"))
	if !t.Failed() {
		t.Logf("aggregate throughput: %d hosts × %d MiB in %v: %.0f MB/s",
			fleetHosts, fleetObject>>20, slowest.Round(time.Millisecond), float64(fleetHosts*fleetObject)/slowest.Seconds()/1e6)
	}
	t.Logf("CPU during the scans: %s", cpu.report(hosts))
	for i, h := range hosts {
		h.checkFetchedOnce(t, i)
		h.d.stop(t)
	}
}

// fleetHost is one host: its daemon, and its scan of the object.
type fleetHost struct {
	d       *daemon
	metrics string // the daemon's --metrics address

	cat    *exec.Cmd
	check  *patternCheck
	stderr syncbuf.Buffer
	done   chan struct{}
	err    error         // of the scan's Wait, once done is closed
	took   time.Duration // from the scans' start to this one's end
}

// startFleetHost starts a daemon with a disk cache and flags, reaching the
// store at endpoint with the cluster's credentials.
func startFleetHost(t *testing.T, sw *seaweedtest.Cluster, endpoint string, flags []string) *fleetHost {
	t.Helper()
	dir := shortTempDir(t)
	h := &fleetHost{metrics: freeAddr(t)}
	h.d = startDaemonFor(t, fleetTimeout, filepath.Join(dir, "s.sock"), sw.Env(endpoint),
		append([]string{"--disk-cache", filepath.Join(dir, "disk-cache"), "--disk-cache-size", "2G", "--metrics", h.metrics}, flags...)...)
	return h
}

// scan starts `filemap cat` of uri at version through the host's daemon;
// its output is checked as it comes, and its time counted from start.
func (h *fleetHost) scan(t *testing.T, uri, version string, start time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fleetTimeout)
	h.cat = exec.CommandContext(ctx, cliBinary(t), "cat", "--socket", h.d.socket, "--object-version", version, uri)
	h.cat.Env = cliEnv()
	h.check = &patternCheck{}
	h.cat.Stdout, h.cat.Stderr = h.check, &h.stderr
	h.cat.WaitDelay = 10 * time.Second
	if err := h.cat.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	h.done = make(chan struct{})
	go func() {
		defer cancel()
		h.err = h.cat.Wait()
		h.took = time.Since(start)
		close(h.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-h.done
	})
}

// wait waits for host i's scan and checks that it read the whole object,
// every byte the version's.
func (h *fleetHost) wait(t *testing.T, i int) {
	t.Helper()
	<-h.done
	if h.err != nil {
		t.Errorf("host %d: filemap cat: %v after %d bytes; stderr:\n%s", i, h.err, h.check.checked.Load(), h.stderr.String())
		return
	}
	if n := h.check.checked.Load(); n != fleetObject {
		t.Errorf("host %d: filemap cat wrote %d bytes, want %d", i, n, fleetObject)
	}
}

// checkFetchedOnce checks host i's daemon counters: no page got SIGBUS, the
// disk cache loaded each chunk from the store once and wrote each once, and
// the bytes of ranged requests beyond the object's are those of requests
// that did not succeed (each at most --remote-max-request): a failure
// retried, a hedge's loser, a readahead request abandoned when its window
// had been read.
func (h *fleetHost) checkFetchedOnce(t *testing.T, i int) {
	t.Helper()
	st := statJSON(t, h.d.socket)
	const chunks = fleetObject / remote.DefaultChunkSize
	if st.SIGBUS != 0 || st.ObjectChanged != 0 {
		t.Errorf("host %d: %d pages got SIGBUS, %d fills found the object changed; want none", i, st.SIGBUS, st.ObjectChanged)
	}
	dc := st.DiskCache
	if dc == nil {
		t.Fatalf("host %d: filemap stat shows no disk cache", i)
	}
	if dc.Misses != chunks || dc.BytesWritten != fleetObject {
		t.Errorf("host %d: disk cache %+v; want each of the %d chunks fetched once (%d misses) and written once (%d bytes)",
			i, *dc, chunks, chunks, fleetObject)
	}
	failed, outcomes := requestOutcomes(t, h.metrics)
	extra := int64(st.RemoteRequestBytes) - fleetObject
	if extra < 0 || extra > int64(failed)*remote.DefaultMaxRequest {
		t.Errorf("host %d: ranged requests asked for %d bytes of a %d-byte object: %d bytes more, with %d requests that did not succeed %v",
			i, st.RemoteRequestBytes, fleetObject, extra, failed, outcomes)
	}
	t.Logf("host %d: scan %v, %d ranged requests of %d MiB %v, %d retries, %d hedges, disk cache %d misses",
		i, h.took.Round(time.Millisecond), st.RemoteRequests, st.RemoteRequestBytes>>20, outcomes, st.RemoteRetries, st.RemoteHedges, dc.Misses)
}

// requestOutcomes reads a daemon's /metrics: its ranged requests by
// outcome, and how many did not succeed.
func requestOutcomes(t *testing.T, addr string) (failed uint64, outcomes map[string]uint64) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	outcomes = make(map[string]uint64)
	re := regexp.MustCompile(`(?m)^filemap_remote_request_seconds_count\{outcome="(\w+)"\} (\d+)$`)
	for _, m := range re.FindAllSubmatch(body, -1) {
		n, _ := strconv.ParseUint(string(m[2]), 10, 64)
		outcomes[string(m[1])] = n
		if string(m[1]) != "ok" {
			failed += n
		}
	}
	if outcomes["ok"] == 0 {
		t.Fatalf("http://%s/metrics counts no ranged request that succeeded:\n%s", addr, body)
	}
	return failed, outcomes
}

// failMidScan makes the volume server with the most volumes fail once
// every host has scanned a quarter of the object, and fails the test if
// any scan had ended by then: the loss must come in the middle of every
// scan. It returns the server, what it held, and how far each scan was.
func failMidScan(t *testing.T, sw *seaweedtest.Cluster, hosts []*fleetHost, fail func(*seaweedtest.Server) error) (*seaweedtest.Server, string, string) {
	t.Helper()
	for {
		least := int64(fleetObject)
		for _, h := range hosts {
			select {
			case <-h.done:
				t.Fatalf("a scan ended (%v) before every host had scanned a quarter of the object; stderr:\n%s", h.err, h.stderr.String())
			default:
			}
			least = min(least, h.check.checked.Load())
		}
		if least >= fleetObject/4 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	victim, counts, err := sw.MostVolumes()
	if err != nil {
		t.Fatal(err)
	}
	if err := fail(victim); err != nil {
		t.Fatal(err)
	}
	var progress []string
	for _, h := range hosts {
		progress = append(progress, fmt.Sprintf("%d%%", 100*h.check.checked.Load()/fleetObject))
	}
	return victim, fmt.Sprintf("volume server %s (volumes per server: %v)", victim.Addr, counts), strings.Join(progress, ", ")
}

// patternCheck is a writer that checks a stream against the pattern from
// offset 0 on, and counts the bytes checked.
type patternCheck struct {
	checked atomic.Int64
	want    []byte
}

func (c *patternCheck) Write(p []byte) (int, error) {
	off := c.checked.Load()
	if off+int64(len(p)) > fleetObject {
		return 0, fmt.Errorf("%d bytes at offset %d: past the object's %d", len(p), off, fleetObject)
	}
	if cap(c.want) < len(p) {
		c.want = make([]byte, len(p))
	}
	want := c.want[:len(p)]
	pattern.Fill(want, off)
	for i := range p {
		if p[i] != want[i] {
			return i, fmt.Errorf("byte at offset %d is %#x, want %#x", off+int64(i), p[i], want[i])
		}
	}
	c.checked.Add(int64(len(p)))
	return len(p), nil
}

// patternReader is size bytes of the pattern, as a body the AWS SDK can
// hash and then send (it seeks back).
type patternReader struct{ off, size int64 }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.size-r.off)]
	pattern.Fill(p, r.off)
	r.off += int64(len(p))
	return len(p), nil
}

func (r *patternReader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += r.off
	case io.SeekEnd:
		off += r.size
	}
	if off < 0 {
		return 0, errors.New("patternReader: seek to a negative offset")
	}
	r.off = off
	return off, nil
}

// putPattern stores size bytes of the pattern as bucket/key and returns
// the VersionId the store gave them.
func putPattern(t *testing.T, c *s3.Client, bucket, key string, size int64) string {
	t.Helper()
	return putBody(t, c, bucket, key, &patternReader{size: size}, size)
}

// putBytes stores data as bucket/key and returns its VersionId.
func putBytes(t *testing.T, c *s3.Client, bucket, key string, data []byte) string {
	t.Helper()
	return putBody(t, c, bucket, key, bytes.NewReader(data), int64(len(data)))
}

func putBody(t *testing.T, c *s3.Client, bucket, key string, body io.ReadSeeker, size int64) string {
	t.Helper()
	out, err := c.PutObject(context.Background(), &s3.PutObjectInput{
		Bucket: &bucket, Key: &key, Body: body, ContentLength: aws.Int64(size),
	})
	if err != nil {
		t.Fatalf("put s3://%s/%s (%d bytes): %v", bucket, key, size, err)
	}
	v := aws.ToString(out.VersionId)
	if v == "" || v == "null" {
		t.Fatalf("put s3://%s/%s: VersionId %q; want the versioned bucket's own", bucket, key, v)
	}
	return v
}

// cpuMeter measures the CPU time the machine and the fleet's processes use
// from its start: what bounds a throughput on a machine whose few CPUs
// serve the store, the networks, the daemons and the clients, and other
// people's work.
type cpuMeter struct {
	t       *testing.T
	start   time.Time
	busy    time.Duration // the machine's, all CPUs, at the start
	daemons []int
	weed    []int
	self    time.Duration
	before  map[int]time.Duration
}

func newCPUMeter(t *testing.T, hosts []*fleetHost, sw *seaweedtest.Cluster) *cpuMeter {
	m := &cpuMeter{t: t, start: time.Now(), busy: testutil.MachineBusy(t), before: make(map[int]time.Duration)}
	for _, h := range hosts {
		m.daemons = append(m.daemons, h.d.cmd.Process.Pid)
	}
	for _, s := range sw.Servers() {
		m.weed = append(m.weed, s.Pid())
	}
	for _, pid := range append(append([]int{os.Getpid()}, m.daemons...), m.weed...) {
		m.before[pid], _ = procCPU(pid)
	}
	return m
}

// used is the CPU time the processes of pids that are still running have
// used since the start.
func (m *cpuMeter) used(pids ...int) time.Duration {
	var d time.Duration
	for _, pid := range pids {
		if now, ok := procCPU(pid); ok {
			d += now - m.before[pid]
		}
	}
	return d
}

func (m *cpuMeter) report(hosts []*fleetHost) string {
	wall := time.Since(m.start)
	busy := testutil.MachineBusy(m.t) - m.busy
	var cats time.Duration
	for _, h := range hosts {
		if ps := h.cat.ProcessState; ps != nil {
			cats += ps.UserTime() + ps.SystemTime()
		}
	}
	sec := func(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }
	return fmt.Sprintf("%v of %d CPUs: busy %s (%.0f%%); of it the daemons %s, SeaweedFS %s (the servers that lived), "+
		"the cats %s, this test (checking the bytes) %s, the rest (toxiproxy, the kernel's network, other work) %s",
		wall.Round(time.Millisecond), runtime.NumCPU(), sec(busy), 100*busy.Seconds()/wall.Seconds()/float64(runtime.NumCPU()),
		sec(m.used(m.daemons...)), sec(m.used(m.weed...)), sec(cats), sec(m.used(os.Getpid())),
		sec(busy-m.used(m.daemons...)-m.used(m.weed...)-cats-m.used(os.Getpid())))
}

// procCPU is the user and system time process pid has used, and whether
// it is still there to say.
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// After the command's closing parenthesis: state, then utime and stime
	// as the 12th and 13th fields.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, false
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / testutil.UserHZ, true
}
