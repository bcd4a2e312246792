package filemap

// Requests no library sends: a hand-built client puts extreme offsets,
// lengths and ids in every field of every request type. Each request is
// answered, an error or a clamped success, and a library client mapping
// the same object goes on faulting its pages in, checked byte for byte.

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/testutil"
	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/server"
	"github.com/filemap/filemap/uffd"
	"golang.org/x/sys/unix"
)

// hostileWait bounds the wait for each answer: a request still unanswered
// after it is a daemon that never answers.
const hostileWait = time.Minute

// rawClient is a client that speaks the protocol by hand.
type rawClient struct {
	t  *testing.T
	c  *proto.Conn
	id uint32
}

func dialRaw(t *testing.T, socket string) *rawClient {
	t.Helper()
	nc, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	rc := &rawClient{t: t, c: proto.NewConn(nc.(*net.UnixConn))}
	t.Cleanup(func() { rc.c.Close() })
	if _, err := rc.call(proto.THello, proto.Hello{PID: os.Getpid(), Program: "hostile"}, nil, nil); err != nil {
		t.Fatalf("hello: %v", err)
	}
	return rc
}

// call sends a request and returns its answer: the reply's descriptors, or
// the daemon's error. Anything else (no answer in time, a closed
// connection) fails the test.
func (rc *rawClient) call(typ proto.Type, req any, fds []*os.File, reply any) ([]*os.File, error) {
	rc.t.Helper()
	rc.c.UnixConn().SetDeadline(time.Now().Add(hostileWait))
	rc.id++
	got, err := rc.c.Call(typ, rc.id, req, fds, reply)
	var pe *proto.Error
	if err != nil && !errors.As(err, &pe) {
		rc.t.Fatalf("%v %+v: no answer: %v", typ, req, err)
	}
	return got, err
}

// uffdFile is a userfaultfd of this process with nothing registered, for
// the caller to close: the daemon serves it, and no fault arrives on it.
func uffdFile(t *testing.T) *os.File {
	t.Helper()
	u, err := uffd.New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.API(0, 0); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.FcntlInt(uintptr(u.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "uffd")
}

// Every request type, with every extreme value in its offsets, lengths,
// sizes and ids, gets an answer and leaves the victim's faults on the same
// object served; willneed of 2^62 bytes once never returned, and froze the
// object's faults.
func TestHostileRangesAreAnswered(t *testing.T) {
	const size = 4 << 20
	const npages = size / ps
	d := startDaemon(t, server.Config{})
	path := patternFile(t, size)
	victim := startDriver(t, d.sock)
	victim.open(path, "advice=random") // a fault reads its page alone
	page := int64(0)
	// readNext has the victim fault in a page it has not read yet, with the
	// caches emptied first: a real fault, served by a store read.
	readNext := func(after string) {
		t.Helper()
		if _, err := d.s.DropCaches(0); err != nil {
			t.Fatal(err)
		}
		if r := victim.Do("read %d %d", page*ps, ps); r != "ok" {
			t.Fatalf("after %s, the victim's read of page %d: %q", after, page, r)
		}
		page = (page + 97) % npages
	}
	readNext("nothing")

	hc := dialRaw(t, d.sock)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var or proto.OpenReply
	fds, err := hc.call(proto.TOpen, proto.Open{URI: path}, []*os.File{f}, &or)
	if err != nil || len(fds) != 1 {
		t.Fatalf("open %s: %v, %d descriptors", path, err, len(fds))
	}
	cacheFile := fds[0]
	defer cacheFile.Close()
	const addr = 1 << 40
	var ar proto.AttachReply
	uf := uffdFile(t)
	defer uf.Close()
	if _, err := hc.call(proto.TAttach, proto.Attach{Handle: or.Handle, Addr: addr, Len: size}, []*os.File{uf}, &ar); err != nil {
		t.Fatalf("attach: %v", err)
	}

	// A range whose end overflows an int64 runs to the object's end: it is
	// clamped, not dropped. With page 0 read, the object is then whole.
	if _, err := hc.call(proto.TAdvise, proto.Advise{Region: ar.Region, Advice: "willneed", Offset: ps, Length: math.MaxInt64}, nil, nil); err != nil {
		t.Fatalf("willneed of 2^63-1 bytes from 4096: %v", err)
	}
	testutil.WaitFor(t, "willneed of 2^63-1 bytes from 4096 to read the rest of the object", func() bool {
		objs := d.s.Objects(0)
		i := slices.IndexFunc(objs, func(o proto.ObjectStat) bool { return o.URI == path })
		return i >= 0 && objs[i].CacheBytes == size
	})

	const huge = int64(1) << 62
	const maxU = uint64(math.MaxUint64)
	maxAligned := int64(math.MaxInt64) &^ (ps - 1)
	signed := []int64{0, -1, -huge, huge, math.MaxInt64, math.MinInt64, maxAligned}
	unsigned := []uint64{0, maxU, maxU &^ (ps - 1), 1 << 62, uint64(maxAligned)}
	addrs, lens := append(slices.Clone(unsigned), addr), append(slices.Clone(unsigned), ps)

	type request struct {
		typ   proto.Type
		req   any
		cache bool // the object's file and the cache file travel with it
	}
	var reqs []request
	for _, off := range signed {
		for _, n := range signed {
			reqs = append(reqs, request{typ: proto.TAdvise, req: proto.Advise{Region: ar.Region, Advice: "willneed", Offset: off, Length: n}})
		}
		reqs = append(reqs, request{typ: proto.TAdvise, req: proto.Advise{Region: ar.Region, Advice: "dontneed", Offset: off, Length: off}})
		// A re-open that hands back the cache file, with a size of its own.
		reqs = append(reqs, request{typ: proto.TOpen, req: proto.Open{URI: path, Cache: true, Size: off}, cache: true})
		for _, a := range addrs {
			for _, n := range lens {
				reqs = append(reqs, request{typ: proto.TAttach, req: proto.Attach{Handle: or.Handle, Addr: a, Len: n, Offset: off}})
			}
		}
	}
	for _, id := range unsigned {
		reqs = append(reqs,
			request{typ: proto.TAdvise, req: proto.Advise{Region: id, Advice: "willneed", Offset: -huge, Length: huge}},
			request{typ: proto.TAttach, req: proto.Attach{Handle: id, Addr: addr, Len: ps}},
			request{typ: proto.TAttach, req: proto.Attach{Handle: or.Handle, Addr: addr, Len: ps, Features: id}},
			request{typ: proto.TDetach, req: proto.Detach{Region: id}},
			request{typ: proto.TClose, req: proto.Close{Handle: id}},
			request{typ: proto.TResume, req: proto.Resume{Region: id}})
	}

	failed := 0
	for _, r := range reqs {
		var fds []*os.File
		switch {
		case r.typ == proto.TAttach:
			fds = []*os.File{uffdFile(t)}
		case r.cache:
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			fds = []*os.File{f}
		}
		send := fds
		if r.cache {
			send = append(send, cacheFile)
		}
		var reply struct {
			Handle uint64 `json:"handle"`
			Region uint64 `json:"region"`
		}
		got, err := hc.call(r.typ, r.req, send, &reply)
		closeFiles(got)
		closeFiles(fds)
		switch {
		case err != nil:
			failed++
		case r.typ == proto.TAttach:
			// What a request made, it lets go of again; the victim's
			// object stays attached through the first region.
			hc.call(proto.TDetach, proto.Detach{Region: reply.Region}, nil, nil)
		case r.typ == proto.TOpen:
			hc.call(proto.TClose, proto.Close{Handle: reply.Handle}, nil, nil)
		}
		readNext(fmt.Sprintf("%v %+v", r.typ, r.req))
	}
	t.Logf("%d hostile requests answered, %d of them with an error", len(reqs), failed)
	if failed == 0 || failed == len(reqs) {
		t.Errorf("%d of %d requests failed: want the impossible ones refused and the clampable ones served", failed, len(reqs))
	}

	victim.OK("read 0 %d", size) // every byte, checked against the file
	st := d.s.Stats()
	if st.ProtocolErrors != 0 || st.SIGBUS != 0 {
		t.Errorf("after the hostile requests: %d connections closed for bad frames, %d pages poisoned; want none", st.ProtocolErrors, st.SIGBUS)
	}
	if st.MajorFaults < uint64(len(reqs)) {
		t.Errorf("%d major faults for the victim's %d reads after emptied caches: the test exercised less than it says", st.MajorFaults, len(reqs))
	}
	if _, err := hc.call(proto.TStat, proto.Empty{}, nil, &proto.Stats{}); err != nil {
		t.Errorf("the hostile client's own connection after all that: %v", err)
	}
	// Its account holds what it holds: the one object and region.
	if u := usageOf(d, os.Getpid()); u.Objects != 1 || u.MappedBytes != size || u.Regions != 1 {
		t.Errorf("the hostile client's account: %+v; want 1 object of %d bytes, 1 region", u, size)
	}
}
