package filemap

// Driver commands for the fault-injection, soak and security tests (their
// cases are in driver_test.go's switch).

import (
	"context"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/filemap/filemap/internal/sigbus"
	"github.com/filemap/filemap/proto"
	"golang.org/x/sys/unix"
)

// scan reads pages [start, end) of the mapping one at a time and checks
// each: "ok SERVED BAD" where BAD lists the pages that got SIGBUS ("-" if
// none). A mismatch ends it.
func (st *driverState) scan(start, end int64) string {
	var bad []string
	served := 0
	for p := start; p < end; p++ {
		off := p * ps
		n := min(ps, st.m.Size()-off)
		b, sig := st.load(off, n)
		if sig >= 0 {
			bad = append(bad, strconv.FormatInt(p, 10))
			continue
		}
		if r := st.check(b, off); r != "ok" {
			return r
		}
		served++
	}
	if len(bad) == 0 {
		bad = []string{"-"}
	}
	return fmt.Sprintf("ok %d %s", served, strings.Join(bad, ","))
}

// spin reads random pages of the mapping in threads until the process is
// killed, and answers at once. A wrong byte ends the process with a message.
func (st *driverState) spin(threads int) string {
	npages := (st.m.Size() + ps - 1) / ps
	for i := range threads {
		go func() {
			r := rand.New(rand.NewPCG(uint64(os.Getpid()), uint64(i)))
			want := make([]byte, ps)
			for {
				off := r.Int64N(npages) * ps
				n := min(ps, st.m.Size()-off)
				b, sig := st.load(off, n)
				if sig >= 0 {
					fmt.Fprintf(os.Stderr, "spin: SIGBUS at %d\n", sig)
					os.Exit(3)
				}
				st.file.ReadAt(want[:n], off)
				if j := firstDiff(b, want[:n]); j >= 0 {
					fmt.Fprintf(os.Stderr, "spin: mismatch at %d\n", off+int64(j))
					os.Exit(3)
				}
			}
		}()
	}
	return "ok"
}

// latencyBuckets is a histogram of page access times: bucket i counts the
// accesses that took [2^(i-1), 2^i) ns.
const latencyBuckets = 48

// soak maps a shared and a private object and reads them in threads for d:
// thread i reads the shared object if i%4 < 2, else the private one, at
// random if i is even, else sequentially from a random start. Every page is
// timed and checked against the file. The answer is "ok READS BYTES MAXNS
// H0,H1,...", the histogram in latencyBuckets.
func soak(shared, private string, threads int, d time.Duration) string {
	type object struct {
		m *Mapping
		f *os.File
	}
	var objs [2]object
	for i, path := range []string{shared, private} {
		m, err := Open(context.Background(), path)
		if err != nil {
			return "err " + err.Error()
		}
		defer m.Close()
		f, err := os.Open(path)
		if err != nil {
			return "err " + err.Error()
		}
		defer f.Close()
		objs[i] = object{m, f}
	}
	var (
		mu       sync.Mutex
		hist     [latencyBuckets]uint64
		worst    time.Duration
		reads    atomic.Int64
		checked  atomic.Int64
		failure  atomic.Value
		wg       sync.WaitGroup
		deadline = time.Now().Add(d)
	)
	for i := range threads {
		wg.Go(func() {
			o := objs[(i/2)%2]
			seq := i%2 == 1
			size := o.m.Size()
			npages := (size + ps - 1) / ps
			r := rand.New(rand.NewPCG(uint64(os.Getpid()), uint64(i)))
			var h [latencyBuckets]uint64
			var most time.Duration
			got, want := make([]byte, ps), make([]byte, ps)
			p := r.Int64N(npages)
			for n := 0; failure.Load() == nil; n++ {
				if n%64 == 0 && time.Now().After(deadline) {
					break
				}
				if seq {
					p = (p + 1) % npages
				} else {
					p = r.Int64N(npages)
				}
				off := p * ps
				k := min(ps, size-off)
				t0 := time.Now()
				at, faulted := sigbus.Catch(o.m.mem, func() { copy(got[:k], o.m.mem[off:off+k]) })
				lat := time.Since(t0)
				if faulted {
					failure.Store(fmt.Sprintf("sigbus at %d of %s", at, o.f.Name()))
					break
				}
				if _, err := o.f.ReadAt(want[:k], off); err != nil {
					failure.Store(fmt.Sprintf("err pread %s: %v", o.f.Name(), err))
					break
				}
				if j := firstDiff(got[:k], want[:k]); j >= 0 {
					failure.Store(fmt.Sprintf("mismatch at %d of %s: got %#x want %#x", off+int64(j), o.f.Name(), got[j], want[j]))
					break
				}
				h[min(bits.Len64(uint64(lat)), latencyBuckets-1)]++
				most = max(most, lat)
				reads.Add(1)
				checked.Add(k)
			}
			mu.Lock()
			for b := range h {
				hist[b] += h[b]
			}
			worst = max(worst, most)
			mu.Unlock()
		})
	}
	wg.Wait()
	if f := failure.Load(); f != nil {
		return f.(string)
	}
	hs := make([]string, len(hist))
	for i, c := range hist {
		hs[i] = strconv.FormatUint(c, 10)
	}
	return fmt.Sprintf("ok %d %d %d %s", reads.Load(), checked.Load(), worst.Nanoseconds(), strings.Join(hs, ","))
}

// rawOpen asks the daemon at $FILEMAP_SOCKET to open path through a
// descriptor opened as mode says (opath, wronly or rdonly), speaking the
// protocol directly as a client that does not use the library might.
func rawOpen(path, mode string) string {
	var f *os.File
	switch mode {
	case "opath":
		fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return "err " + err.Error()
		}
		f = os.NewFile(uintptr(fd), path)
	case "wronly", "rdonly":
		flag := os.O_RDONLY
		if mode == "wronly" {
			flag = os.O_WRONLY
		}
		var err error
		if f, err = os.OpenFile(path, flag, 0); err != nil {
			return "err " + err.Error()
		}
	default:
		return "error unknown mode " + mode
	}
	defer f.Close()
	nc, err := net.Dial("unix", os.Getenv("FILEMAP_SOCKET"))
	if err != nil {
		return "err " + err.Error()
	}
	c := proto.NewConn(nc.(*net.UnixConn))
	defer c.Close()
	c.UnixConn().SetDeadline(time.Now().Add(30 * time.Second))
	var hr proto.HelloReply
	if _, err := c.Call(proto.THello, 1, proto.Hello{PID: os.Getpid(), Program: "rawopen"}, nil, &hr); err != nil {
		return "err hello: " + err.Error()
	}
	var or proto.OpenReply
	fds, err := c.Call(proto.TOpen, 2, proto.Open{URI: path}, []*os.File{f}, &or)
	closeFiles(fds)
	if err != nil {
		return "err " + err.Error()
	}
	return fmt.Sprintf("ok %d", or.Size)
}
