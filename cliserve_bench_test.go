package filemap

// `filemap serve`, the daemon users run, for the cases of the remote
// benchmark: one daemon a case, so that each case starts cold and has a CPU
// profile and metrics of its own; and a sampler of those metrics, which
// says how many requests were in flight over the case's time.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/clitest"
	"github.com/filemap/filemap/internal/syncbuf"
	"github.com/filemap/filemap/internal/tied"
)

// buildFilemapCLI builds cmd/filemap into a temporary directory. The go
// command's build cache makes this quick after the first time.
func buildFilemapCLI(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "filemap")
	if err := clitest.Build(bin); errors.Is(err, exec.ErrNotFound) {
		tb.Skipf("skipping: %v", err)
	} else if err != nil {
		tb.Fatal(err)
	}
	return bin
}

// cliDaemon is a running `filemap serve`.
type cliDaemon struct {
	socket  string
	metrics string // http://ADDR/metrics
	profile string // where its CPU profile goes when it stops
	proc    *tied.Proc
	log     *syncbuf.Buffer
	sampler *metricSampler
	dir     string
}

// daemonStartTimeout bounds the wait for a daemon to listen.
const daemonStartTimeout = 30 * time.Second

var metricsURL = regexp.MustCompile(`msg="filemap serve: metrics" url=(\S+)`)

// startCLIDaemon runs bin serve with env added to this process's
// environment, its metrics on a free port of loopback, no keeper, its CPU
// profile going to profile, and args; and starts sampling its metrics.
func startCLIDaemon(tb testing.TB, bin string, env []string, profile string, args ...string) *cliDaemon {
	tb.Helper()
	dir, err := os.MkdirTemp("", "fm-rb-") // short: a socket's path has at most 107 bytes
	if err != nil {
		tb.Fatal(err)
	}
	d := &cliDaemon{socket: filepath.Join(dir, "s.sock"), profile: profile, log: new(syncbuf.Buffer), dir: dir}
	cmd := exec.Command(bin, append([]string{"serve", "--socket", d.socket, "--metrics", "127.0.0.1:0",
		"--keep=false", "--cpuprofile", profile}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if d.proc, err = tied.Start(cmd); err != nil {
		tb.Fatal(err)
	}
	listening := make(chan string, 1)
	go d.readLog(stderr, listening)
	select {
	case d.metrics = <-listening:
	case <-d.proc.Exited():
		tb.Fatalf("filemap serve exited before listening: %v\n%s", d.proc.Err(), d.log.String())
	case <-time.After(daemonStartTimeout):
		d.proc.Kill()
		tb.Fatalf("filemap serve did not listen within %v\n%s", daemonStartTimeout, d.log.String())
	}
	if d.metrics == "" {
		d.proc.Kill()
		tb.Fatalf("filemap serve did not say where its metrics are\n%s", d.log.String())
	}
	d.sampler = startMetricSampler(d.metrics, 100*time.Millisecond)
	return d
}

// readLog keeps the daemon's log and, once it says it listens, sends the
// URL of its metrics ("" if it never said).
func (d *cliDaemon) readLog(r io.Reader, listening chan<- string) {
	sc := bufio.NewScanner(r)
	url := ""
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(d.log, line)
		if m := metricsURL.FindStringSubmatch(line); m != nil {
			url = m[1]
		}
		if strings.Contains(line, `msg="filemap serve: listening"`) && listening != nil {
			listening <- url
			listening = nil
		}
	}
}

// stop stops sampling, then the daemon, which writes its profile as it
// exits, and returns the samples.
func (d *cliDaemon) stop(tb testing.TB) []metricSample {
	tb.Helper()
	samples := d.sampler.stop()
	d.proc.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.proc.Exited():
	case <-time.After(30 * time.Second):
		d.proc.Kill()
		tb.Errorf("filemap serve did not exit within 30s of SIGTERM: no profile\n%s", d.log.String())
	}
	os.RemoveAll(d.dir)
	return samples
}

// metricSample is what the daemon's metrics said at one moment: the sums
// over every label of the metrics the remote cases watch.
type metricSample struct {
	at                   time.Duration // since sampling started
	requests             float64       // filemap_remote_request_seconds_count: requests ended
	requestSeconds       float64       // filemap_remote_request_seconds_sum: their time
	requestBytes         float64       // filemap_remote_request_bytes_total
	fills                float64       // filemap_fills_in_flight
	bufferBytes          float64       // filemap_fill_buffer_bytes
	bufferLimit          float64       // filemap_fill_buffer_limit_bytes
	bufferWaits          float64       // filemap_fill_buffer_waits_total
	readaheadWindows     float64       // filemap_readahead_windows_total
	majorFaults, hedge   float64       // filemap_major_faults_total, filemap_remote_hedges_total
	faults, faultSeconds float64       // filemap_fault_service_seconds_count and _sum: from message to wake
}

// metricSampler scrapes a daemon's metrics every so often until stopped.
type metricSampler struct {
	url     string
	quit    chan struct{}
	done    chan struct{}
	samples []metricSample
}

func startMetricSampler(url string, every time.Duration) *metricSampler {
	s := &metricSampler{url: url, quit: make(chan struct{}), done: make(chan struct{})}
	go s.run(every)
	return s
}

func (s *metricSampler) run(every time.Duration) {
	defer close(s.done)
	hc := &http.Client{Timeout: 5 * time.Second}
	start := time.Now()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if m, err := scrapeMetrics(hc, s.url); err == nil {
			s.samples = append(s.samples, sampleOf(m, time.Since(start)))
		}
		select {
		case <-s.quit:
			if m, err := scrapeMetrics(hc, s.url); err == nil { // the case's end
				s.samples = append(s.samples, sampleOf(m, time.Since(start)))
			}
			return
		case <-t.C:
		}
	}
}

// stop takes one last sample and returns them all.
func (s *metricSampler) stop() []metricSample {
	close(s.quit)
	<-s.done
	return s.samples
}

func sampleOf(m map[string]float64, at time.Duration) metricSample {
	return metricSample{
		at:               at,
		requests:         m["filemap_remote_request_seconds_count"],
		requestSeconds:   m["filemap_remote_request_seconds_sum"],
		requestBytes:     m["filemap_remote_request_bytes_total"],
		fills:            m["filemap_fills_in_flight"],
		bufferBytes:      m["filemap_fill_buffer_bytes"],
		bufferLimit:      m["filemap_fill_buffer_limit_bytes"],
		bufferWaits:      m["filemap_fill_buffer_waits_total"],
		readaheadWindows: m["filemap_readahead_windows_total"],
		majorFaults:      m["filemap_major_faults_total"],
		hedge:            m["filemap_remote_hedges_total"],
		faults:           m["filemap_fault_service_seconds_count"],
		faultSeconds:     m["filemap_fault_service_seconds_sum"],
	}
}

// scrapeMetrics reads the Prometheus text at url: each metric's value
// summed over its labels.
func scrapeMetrics(hc *http.Client, url string) (map[string]float64, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	m := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		name := line[:sp]
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		m[name] += v
	}
	return m, sc.Err()
}

// inflightSummary says what the samples of one case show: the requests,
// their mean size and time; the mean requests in flight over the case
// (by Little's law: their time, summed, over the case's); the same in
// slices of its time, as a timeline; the peaks of the fills in flight
// and the read buffers, with the waits for those; and the faults' mean
// service time in the daemon, from its reading the fault to its waking the
// faulter (beside a faulter's own time, it says whether a fault waited in
// the daemon or before it).
func inflightSummary(samples []metricSample) string {
	if len(samples) < 2 {
		return "no metrics sampled"
	}
	first, last := samples[0], samples[len(samples)-1]
	span := (last.at - first.at).Seconds()
	reqs := last.requests - first.requests
	if reqs == 0 || span <= 0 {
		return "no remote requests"
	}
	var peakFills, peakBuf float64
	for _, s := range samples {
		peakFills, peakBuf = max(peakFills, s.fills), max(peakBuf, s.bufferBytes)
	}
	return fmt.Sprintf("%.0f requests of %.2f MiB mean, %.1f ms mean; in flight %.1f mean over %.1f s, by %v: %s; "+
		"fills in flight up to %.0f; read buffers up to %.0f of %.0f MiB, waited for %.0f times; %.0f readahead windows, %.0f hedges; "+
		"%.0f faults served in %.1f ms mean",
		reqs, (last.requestBytes-first.requestBytes)/reqs/(1<<20), (last.requestSeconds-first.requestSeconds)/reqs*1e3,
		(last.requestSeconds-first.requestSeconds)/span, span, timelineStep(samples), inflightTimeline(samples),
		peakFills, peakBuf/(1<<20), last.bufferLimit/(1<<20), last.bufferWaits-first.bufferWaits,
		last.readaheadWindows-first.readaheadWindows, last.hedge-first.hedge,
		last.faults-first.faults, (last.faultSeconds-first.faultSeconds)/max(last.faults-first.faults, 1)*1e3)
}

// timelineStep is the slice of time of a timeline: a multiple of the
// sampling interval, as long as a request's mean time at least (since a
// request's time is counted when it ends, shorter slices alternate between
// none and many), and long enough that there are at most 40.
func timelineStep(samples []metricSample) time.Duration {
	first, last := samples[0], samples[len(samples)-1]
	every := samples[1].at - first.at
	meanRequest := time.Duration((last.requestSeconds - first.requestSeconds) / max(last.requests-first.requests, 1) * 1e9)
	n := max(int64((last.at-first.at)/every+39)/40, int64((meanRequest+every-1)/every), 1)
	return (time.Duration(n) * every).Round(10 * time.Millisecond)
}

// inflightTimeline is the mean requests in flight in each slice of
// timelineStep: the time of the requests that ended in it over its own
// (a request's time is counted when it ends, so a slice may hold some of
// the one before's). A last slice shorter than half a step joins the one
// before, whose requests it mostly ends.
func inflightTimeline(samples []metricSample) string {
	step := timelineStep(samples)
	var ends []metricSample // each slice's last sample
	from := samples[0]
	for _, s := range samples[1:] {
		if s.at-from.at >= step {
			ends = append(ends, s)
			from = s
		}
	}
	if last := samples[len(samples)-1]; last != from {
		if len(ends) > 0 && last.at-from.at < step/2 {
			ends = ends[:len(ends)-1]
		}
		ends = append(ends, last)
	}
	var out []string
	from = samples[0]
	for _, s := range ends {
		out = append(out, fmt.Sprintf("%.1f", (s.requestSeconds-from.requestSeconds)/(s.at-from.at).Seconds()))
		from = s
	}
	return strings.Join(out, " ")
}
