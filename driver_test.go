package filemap

// The driver: a client process that maps objects and touches them as the
// test tells it, checking every byte it reads against the file itself.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/filemap/filemap/internal/sigbus"
	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

type driverState struct {
	m          *Mapping
	file       *os.File         // the same file, read directly: the truth
	written    map[int64][]byte // a copy-on-write mapping's pages written, by page: the truth there
	held       *os.File         // a cache file kept after its mapping closed (holdcache, holdfd)
	handedBack []*proto.Conn    // the connections that handed it back (handback)
}

func runDriver(in io.Reader, out io.Writer) int {
	var st driverState
	sc := bufio.NewScanner(in)
	w := bufio.NewWriter(out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		res := st.run(f[0], f[1:])
		fmt.Fprintln(w, res)
		w.Flush()
	}
	return 0
}

func (st *driverState) run(cmd string, args []string) (res string) {
	num := func(i int) int64 {
		n, err := strconv.ParseInt(args[i], 0, 64)
		if err != nil {
			panic(fmt.Sprintf("%s: argument %d: %v", cmd, i, err))
		}
		return n
	}
	defer func() {
		if r := recover(); r != nil {
			res = fmt.Sprintf("error %v", r)
		}
	}()
	switch cmd {
	case "open":
		return st.open(args)
	case "read":
		return st.read(num(0), num(1))
	case "guard":
		b := make([]byte, num(1))
		err := st.m.Guard(func() { copy(b, st.m.mem[num(0):num(0)+num(1)]) })
		var fe *FaultError
		if errors.As(err, &fe) {
			return fmt.Sprintf("fault %d %s", fe.Offset, err)
		}
		return st.check(b, num(0))
	case "readat":
		p := make([]byte, num(1))
		n, err := st.m.ReadAt(p, num(0))
		if err != nil && err != io.EOF {
			return "err " + err.Error()
		}
		return st.check(p[:n], num(0))
	case "par":
		offs := make([]int64, len(args))
		for i := range args {
			offs[i] = num(i)
		}
		return st.parallel(offs)
	case "rand":
		return st.random(int(num(0)), time.Duration(num(1))*time.Millisecond)
	case "touch":
		return fmt.Sprintf("ok %d", st.m.mem[num(0)])
	case "clear":
		if err := st.m.Advise(DontNeed, num(0), num(1)); err != nil {
			return "err " + err.Error()
		}
		st.forget(num(0), num(1))
		return "ok"
	case "advise":
		a, err := parseAdvice(args[0])
		if err == nil {
			err = st.m.Advise(a, num(1), num(2))
		}
		if err != nil {
			return "err " + err.Error()
		}
		return "ok"
	case "sigread":
		return st.signalRead(num(0), int(num(1)))
	case "mremap":
		return st.mremap()
	case "munmap":
		b := st.m.mem[num(0):]
		if _, _, e := unix.Syscall(unix.SYS_MUNMAP, uintptr(unsafe.Pointer(&b[0])), uintptr(num(1)), 0); e != 0 {
			return "err " + e.Error()
		}
		return "ok"
	case "dontneed":
		if err := unix.Madvise(st.m.mem[num(0):num(0)+num(1)], unix.MADV_DONTNEED); err != nil {
			return "err " + err.Error()
		}
		return "ok"
	case "fork":
		offs := make([]int64, len(args))
		for i := range args {
			offs[i] = num(i)
		}
		return st.fork(offs)
	case "close":
		if err := st.m.Close(); err != nil {
			return "err " + err.Error()
		}
		return "ok"
	case "scan":
		return st.scan(num(0), num(1))
	case "spin":
		return st.spin(int(num(0)))
	case "soak":
		return soak(args[0], args[1], int(num(2)), time.Duration(num(3))*time.Millisecond)
	case "rawopen":
		return rawOpen(args[0], args[1])
	case "holdcache":
		return st.holdCache()
	case "holdfd":
		st.held = os.NewFile(uintptr(num(0)), "held")
		return "ok"
	case "handback":
		return st.handBack(args[0])
	case "retime":
		t := time.Unix(0, num(1))
		if err := os.Chtimes(args[0], t, t); err != nil {
			return "err " + err.Error()
		}
		return "ok"
	case "write":
		return st.write(num(0), num(1), uint64(num(2)))
	case "writeat":
		return st.writeAt(num(0), num(1), uint64(num(2)))
	case "randw":
		return st.randomWrites(int(num(0)), time.Duration(num(1))*time.Millisecond)
	}
	return "error unknown command " + cmd
}

func parseAdvice(s string) (Advice, error) {
	for a := Normal; a <= DontNeed; a++ {
		if a.String() == s {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown advice %q", s)
}

// open PATH [advice=A] [extra=BYTES] [events=remap,remove,unmap,fork] [faulttimeout=DURATION]
func (st *driverState) open(args []string) string {
	var opts []Option
	var o options
	ref := args[0] // the bytes the mapping must show: the object, or a copy of a remote one
	for _, kv := range args[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "ref":
			ref = v
		case "advice":
			a, err := parseAdvice(v)
			if err != nil {
				return "err " + err.Error()
			}
			opts = append(opts, WithAdvice(a))
		case "cow":
			opts = append(opts, WithCopyOnWrite())
		case "version":
			opts = append(opts, WithVersion(v))
		case "faulttimeout":
			d, err := time.ParseDuration(v)
			if err != nil {
				return "err " + err.Error()
			}
			opts = append(opts, WithFaultTimeout(d))
		case "extra":
			o.extra, _ = strconv.ParseInt(v, 0, 64)
		case "events":
			for _, e := range strings.Split(v, ",") {
				o.features |= map[string]uint64{
					"remap": uffd.FeatureEventRemap, "remove": uffd.FeatureEventRemove,
					"unmap": uffd.FeatureEventUnmap, "fork": uffd.FeatureEventFork,
				}[e]
				o.fork = o.fork || e == "fork"
			}
		}
	}
	opts = append(opts, func(p *options) { p.extra, p.features, p.fork = o.extra, o.features, o.fork })
	m, err := Open(context.Background(), args[0], opts...)
	if err != nil {
		return "err " + err.Error()
	}
	f, err := os.Open(ref)
	if err != nil {
		return "err " + err.Error()
	}
	st.m, st.file, st.written = m, f, nil
	return fmt.Sprintf("ok %d %d", m.Size(), uintptr(unsafe.Pointer(&m.mem[0])))
}

// load copies the mapping's bytes [off, off+n) with user-mode loads; a
// SIGBUS becomes the offset it hit. Unlike Guard it leaves the poison in
// place: the conformance tests look at the kernel's own behaviour.
func (st *driverState) load(off, n int64) (b []byte, bad int64) {
	b = make([]byte, n)
	if at, faulted := sigbus.Catch(st.m.mem, func() { copy(b, st.m.mem[off:off+n]) }); faulted {
		return nil, at
	}
	return b, -1
}

func (st *driverState) read(off, n int64) string {
	b, bad := st.load(off, n)
	if bad >= 0 {
		return fmt.Sprintf("sigbus %d", bad)
	}
	return st.check(b, off)
}

// check compares bytes read at off with the file; past its end they must
// be zeros, as the kernel zeroes the tail of the last page.
func (st *driverState) check(b []byte, off int64) string {
	want := make([]byte, len(b))
	n, err := st.file.ReadAt(want, off)
	if err != nil && err != io.EOF {
		return "err " + err.Error()
	}
	clear(want[max(n, 0):])
	st.overlay(want, off)
	if i := firstDiff(b, want); i >= 0 {
		return fmt.Sprintf("mismatch at %d: got %#x want %#x", off+int64(i), b[i], want[i])
	}
	return "ok"
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// parallel reads one page at each offset, all at once, each on its own
// thread, and checks them.
func (st *driverState) parallel(offs []int64) string {
	var wg sync.WaitGroup
	start := make(chan struct{})
	res := make([]string, len(offs))
	for i, off := range offs {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			<-start
			res[i] = st.read(off, ps)
		})
	}
	time.Sleep(10 * time.Millisecond) // let every thread reach the barrier
	close(start)
	wg.Wait()
	for i, r := range res {
		if r != "ok" {
			return fmt.Sprintf("offset %d: %s", offs[i], r)
		}
	}
	return "ok"
}

// random reads random 4 KiB pieces in threads for d, checking every byte.
// It answers "ok PAGES READS P99 MAX": the pages it touched, the reads it
// checked, and the 99th percentile and the maximum of a read's latency,
// in microseconds.
func (st *driverState) random(threads int, d time.Duration) string {
	npages := (st.m.Size() + ps - 1) / ps
	touched := make([]atomic.Bool, npages)
	var reads atomic.Int64
	var bad atomic.Value
	var wg sync.WaitGroup
	lat := make([][]time.Duration, threads)
	stop := time.Now().Add(d)
	for i := range threads {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(i), 42))
			want := make([]byte, ps)
			for time.Now().Before(stop) && bad.Load() == nil {
				p := r.Int64N(npages)
				off := p * ps
				n := min(ps, st.m.Size()-off)
				t0 := time.Now()
				b, sig := st.load(off, n)
				lat[i] = append(lat[i], time.Since(t0))
				if sig >= 0 {
					bad.Store(fmt.Sprintf("sigbus at %d", sig))
					return
				}
				st.file.ReadAt(want[:n], off)
				if j := firstDiff(b, want[:n]); j >= 0 {
					bad.Store(fmt.Sprintf("mismatch at %d", off+int64(j)))
					return
				}
				touched[p].Store(true)
				reads.Add(1)
			}
		})
	}
	wg.Wait()
	if b := bad.Load(); b != nil {
		return b.(string)
	}
	n := 0
	for i := range touched {
		if touched[i].Load() {
			n++
		}
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	var p99, worst time.Duration
	if len(all) > 0 {
		p99, worst = all[len(all)*99/100], all[len(all)-1]
	}
	return fmt.Sprintf("ok %d %d %d %d", n, reads.Load(), p99.Microseconds(), worst.Microseconds())
}

// signalRead faults the page at off on one thread while another sends it
// SIGUSR1 again and again: each signal makes the blocked fault return and
// run again, so the handler sees the same page more than once.
func (st *driverState) signalRead(off int64, nsig int) string {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	go func() {
		for range sigs {
		}
	}()
	tid := make(chan int, 1)
	done := make(chan string, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		done <- st.read(off, ps)
	}()
	t := <-tid
	sent := 0
	for sent < nsig {
		select {
		case r := <-done:
			return fmt.Sprintf("%s (after %d signals)", r, sent)
		case <-time.After(5 * time.Millisecond):
			unix.Tgkill(os.Getpid(), t, syscall.SIGUSR1)
			sent++
		}
	}
	return <-done
}

// mremap moves the whole mapping to a new address.
func (st *driverState) mremap() string {
	old := st.m.mem
	dst, err := unix.Mmap(-1, 0, len(old), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return "err " + err.Error()
	}
	p, err := unix.MremapPtr(unsafe.Pointer(&old[0]), uintptr(len(old)), unsafe.Pointer(&dst[0]), uintptr(len(old)),
		unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED)
	if err != nil {
		return "err " + err.Error()
	}
	st.m.mem = unsafe.Slice((*byte)(p), len(old))
	return fmt.Sprintf("ok %d", uintptr(p))
}

// fork makes a child with fork(2) that sums the pages at offs through its
// inherited copy of the mapping; the parent checks the sums.
func (st *driverState) fork(offs []int64) string {
	var pfd [2]int
	if err := unix.Pipe2(pfd[:], unix.O_CLOEXEC); err != nil {
		return "err " + err.Error()
	}
	defer unix.Close(pfd[0])
	sums := make([]uint64, len(offs))
	pid := forkAndSum(st.m.mem, offs, sums, pfd[1])
	unix.Close(pfd[1])
	if pid < 0 {
		return fmt.Sprintf("err fork: errno %d", -pid)
	}
	got := make([]byte, 8*len(offs))
	_, rerr := io.ReadFull(os.NewFile(uintptr(pfd[0]), "pipe"), got)
	var ws unix.WaitStatus
	unix.Wait4(pid, &ws, 0, nil)
	if rerr != nil {
		return fmt.Sprintf("err child wrote no sums (%v), status %v", rerr, ws)
	}
	for i, off := range offs {
		want := make([]byte, ps)
		st.file.ReadAt(want, off)
		var s uint64
		for _, c := range want {
			s += uint64(c)
		}
		if g := *(*uint64)(unsafe.Pointer(&got[8*i])); g != s {
			return fmt.Sprintf("mismatch: child summed page at %d to %d, want %d", off, g, s)
		}
	}
	return "ok"
}

// forkAndSum forks. The child runs only this function's straight-line code
// and raw system calls — no allocation, no scheduler, no stack growth — sums
// each page, writes the sums to wfd and exits.
//
//go:nosplit
//go:norace
func forkAndSum(mem []byte, offs []int64, sums []uint64, wfd int) int {
	pid, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if errno != 0 {
		return -int(errno)
	}
	if pid != 0 {
		return int(pid)
	}
	for i := 0; i < len(offs); i++ {
		var s uint64
		for j := offs[i]; j < offs[i]+ps; j++ {
			s += uint64(mem[j])
		}
		sums[i] = s
	}
	syscall.RawSyscall(syscall.SYS_WRITE, uintptr(wfd), uintptr(unsafe.Pointer(&sums[0])), uintptr(8*len(sums)))
	syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	return 0
}
