package pagecache

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Adopt makes the cache of an object of size bytes from a cache file that a
// daemon of this uid made — one that died, or that handed over to this one
// — and that a client, which kept mapping it, hands back: its pages are the
// cache, warm, and the client's mapping of them stays valid. f is the
// client's read-only descriptor; Adopt takes it over and reopens the file
// for writing. The file's pages are found with SEEK_DATA and SEEK_HOLE and
// start uptodate; resident is called with each run of them, in order, so
// the caller can account them. A cache file from a huge backing may hold
// huge folios: its wholly present extents are taken to be huge, so a punch
// never cuts one.
//
// Adopt refuses what no daemon of this uid could have made: a file that is
// not on a tmpfs, is owned by another uid, is not mode 0400, or is not the
// object's size in whole pages. That does not make a file one: a process of
// this uid can make such a memfd with any bytes in it, and any client can
// hand back the cache of another object of the same size. Adopt cannot
// tell whose bytes a file holds, so the caller serves a cache adopted from
// a client only to the clients that hold its file.
func (b *Backing) Adopt(name string, size int64, f *os.File, resident func(start, end int64)) (*Cache, error) {
	defer f.Close()
	if size < 0 {
		return nil, fmt.Errorf("pagecache %s: negative size %d", name, size)
	}
	npages := (size + PageSize - 1) / PageSize
	memfd, err := checkCacheFile(f, npages*PageSize)
	if err != nil {
		return nil, fmt.Errorf("pagecache %s: adopt the cache file a client sent: %w", name, err)
	}
	rw, err := reopenWritable(f)
	if err != nil {
		return nil, fmt.Errorf("pagecache %s: adopt the cache file a client sent: %w", name, err)
	}
	o, err := wrap(name, size, rw)
	if err != nil {
		return nil, err
	}
	if !memfd {
		o.nhuge = size / HugeSize
		if b.col != nil {
			if err := o.mapView(b.col); err != nil {
				o.Close()
				return nil, err
			}
		}
	}
	if err := o.scan(resident); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

// checkCacheFile checks that f is a cache file as this uid's daemons make
// them, of size bytes, and reports whether it is a sealed memfd (else a
// file of a private tmpfs, which may hold huge folios).
func checkCacheFile(f *os.File, size int64) (memfd bool, err error) {
	fd := int(f.Fd())
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return false, fmt.Errorf("fstatfs: %w", err)
	}
	if fs.Type != unix.TMPFS_MAGIC {
		return false, fmt.Errorf("not a memfd or a tmpfs file (file system magic %#x)", fs.Type)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, fmt.Errorf("fstat: %w", err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return false, fmt.Errorf("not a regular file (mode %#o)", st.Mode)
	case st.Uid != uint32(os.Geteuid()):
		return false, fmt.Errorf("owned by uid %d, not this daemon's uid %d", st.Uid, os.Geteuid())
	case st.Mode&0o7777 != 0o400:
		return false, fmt.Errorf("mode %#o, want 0400 as the daemon makes them", st.Mode&0o7777)
	case st.Size != size:
		return false, fmt.Errorf("%d bytes long, want %d", st.Size, size)
	}
	// A memfd was sealed against growing and shrinking at birth; any
	// other shmem file is born F_SEAL_SEAL and nothing else.
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return false, fmt.Errorf("F_GET_SEALS: %w", err)
	}
	const sized = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW
	return seals&sized == sized, nil
}

// reopenWritable opens f's file again for reading and writing, through
// /proc. Its mode is 0400: root opens it anyway; the owner, any other
// daemon, makes it 0600 for the open and puts 0400 back.
func reopenWritable(f *os.File) (*os.File, error) {
	path := fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	rw, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil || !errors.Is(err, os.ErrPermission) {
		return rw, err
	}
	if err := unix.Fchmod(int(f.Fd()), 0o600); err != nil {
		return nil, fmt.Errorf("chmod for reopening: %w", err)
	}
	rw, err = os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if cerr := unix.Fchmod(int(f.Fd()), 0o400); cerr != nil && err == nil {
		rw.Close()
		return nil, fmt.Errorf("chmod back to 0400: %w", cerr)
	}
	return rw, err
}

// scan marks the pages the cache file holds uptodate, run by run, and the
// wholly present extents of a huge cache huge.
func (o *Cache) scan(resident func(start, end int64)) error {
	fd := int(o.file.Fd())
	end := o.npages * PageSize
	for off := int64(0); off < end; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data past off
		}
		if err != nil {
			return fmt.Errorf("pagecache %s: SEEK_DATA from offset %d: %w", o.name, off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("pagecache %s: SEEK_HOLE from offset %d: %w", o.name, data, err)
		}
		lo, hi := data/PageSize, min((hole+PageSize-1)/PageSize, o.npages)
		o.mark(lo, hi)
		if resident != nil {
			resident(lo, hi)
		}
		off = hole
	}
	return nil
}

// mark makes pages [lo, hi) uptodate and resident.
func (o *Cache) mark(lo, hi int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for p := lo; p < hi; p++ {
		o.states.set(p, Uptodate)
	}
	o.resident.Add(hi - lo)
	for x := lo / HugePages; x < o.nhuge && x*HugePages < hi; x++ {
		if o.states.extentUptodate(x) {
			o.states.setHuge(x, true)
		}
	}
}
