// Package proto is filemap's control protocol: how a client asks the handler
// daemon to open an object and to serve the faults of a region. It stands
// where the kernel has the mmap(2) system call and the vm_operations table.
//
// Frames are length-prefixed on a Unix stream socket. File descriptors travel
// with a frame as SCM_RIGHTS: the object's fd the client opened itself (so the
// kernel checks the client's permission), the cache's memfd, the client's
// userfaultfd. The header is 16 bytes, little-endian:
//
//	0  magic    "FM"
//	2  version  1
//	3  type     one of the Type constants
//	4  nfds     descriptors that travel with this frame
//	5  flags    0
//	6  reserved 0
//	8  id       request id; a reply carries the id of its request
//	12 length   payload bytes, at most MaxPayload
//
// The payload is a JSON object. Everything a client needs to re-attach to a
// restarted daemon is in its own hands: the object's URI and pinned version
// (Open.Version), its uffd, and the regions it attached.
package proto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// Version is the protocol version this package speaks.
const Version = 1

// HeaderSize is the length of a frame header.
const HeaderSize = 16

// MaxPayload bounds a frame's payload: a larger length is a corrupt or
// hostile frame, and nothing that large is ever needed.
const MaxPayload = 64 << 10

// MaxFds bounds the descriptors one frame may carry.
const MaxFds = 4

var magic = [2]byte{'F', 'M'}

// Type is a frame's kind.
type Type uint8

const (
	THello  Type = 1 // Hello → HelloReply
	TOpen   Type = 2 // Open + [object fd] → OpenReply + memfd
	TAttach Type = 3 // Attach + uffd → AttachReply
	TAdvise Type = 4 // Advise → Empty
	TDetach Type = 5 // Detach → Empty
	TClose  Type = 6 // Close → Empty
	TStat   Type = 7 // Empty → Stats
	TDrop   Type = 8 // Empty → Dropped: punch every cache's pages out (drop_caches)
	TResume Type = 9 // Resume → ResumeReply: take back a region a previous daemon served

	// TTakeover (Empty → Empty + the listening socket) asks the daemon to
	// retire in favour of the caller, a daemon of the same uid: it hands
	// over its socket and leaves its regions in its keeper.
	TTakeover Type = 10

	TObjects Type = 11 // Empty → Objects: the caches the daemon holds

	TReply Type = 0x80 // the request succeeded; payload is its reply
	TError Type = 0x81 // the request failed; payload is an Error
)

var typeNames = map[Type]string{
	THello: "hello", TOpen: "open", TAttach: "attach", TAdvise: "advise", TDetach: "detach",
	TClose: "close", TStat: "stat", TDrop: "drop-caches", TResume: "resume", TTakeover: "takeover", TObjects: "objects", TReply: "reply", TError: "error",
}

func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type(%#x)", uint8(t))
}

// Header is a decoded frame header.
type Header struct {
	Type   Type
	NFds   int
	ID     uint32
	Length int
}

// Errors a peer's bad frame produces. The connection is closed after any of
// them: framing is lost.
var (
	ErrMagic     = errors.New("bad magic")
	ErrVersion   = errors.New("unsupported protocol version")
	ErrTooLarge  = errors.New("payload too large")
	ErrTruncated = errors.New("truncated frame")
	ErrFds       = errors.New("wrong number of file descriptors")
	ErrHeader    = errors.New("bad header")
)

// DecodeHeader parses and checks a frame header.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header of %d bytes", ErrTruncated, len(b))
	}
	if b[0] != magic[0] || b[1] != magic[1] {
		return Header{}, fmt.Errorf("%w %q", ErrMagic, b[:2])
	}
	if b[2] != Version {
		return Header{}, fmt.Errorf("%w %d (this side speaks %d)", ErrVersion, b[2], Version)
	}
	h := Header{
		Type:   Type(b[3]),
		NFds:   int(b[4]),
		ID:     binary.LittleEndian.Uint32(b[8:]),
		Length: int(binary.LittleEndian.Uint32(b[12:])),
	}
	if b[5] != 0 || binary.LittleEndian.Uint16(b[6:]) != 0 {
		return Header{}, fmt.Errorf("%w: flags %#x reserved %#x", ErrHeader, b[5], binary.LittleEndian.Uint16(b[6:]))
	}
	if h.NFds > MaxFds {
		return Header{}, fmt.Errorf("%w: header announces %d, at most %d", ErrFds, h.NFds, MaxFds)
	}
	if h.Length > MaxPayload {
		return Header{}, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, h.Length, MaxPayload)
	}
	return h, nil
}

// EncodeHeader writes h into b[:HeaderSize].
func EncodeHeader(b []byte, h Header) {
	b[0], b[1], b[2], b[3] = magic[0], magic[1], Version, byte(h.Type)
	b[4], b[5] = byte(h.NFds), 0
	binary.LittleEndian.PutUint16(b[6:], 0)
	binary.LittleEndian.PutUint32(b[8:], h.ID)
	binary.LittleEndian.PutUint32(b[12:], uint32(h.Length))
}

// Hello opens a session.
type Hello struct {
	PID     int    `json:"pid"`
	Program string `json:"program,omitempty"`
}

// HelloReply answers Hello.
type HelloReply struct {
	Daemon   string `json:"daemon"`
	PageSize int    `json:"page_size"`
}

// Open asks for an object's cache. For a local file the client sends the fd
// it opened; URI names the object, a local file by its absolute path (the
// daemon refuses a relative one: it cannot know the client's working
// directory), and the daemon's messages and logs show it with its
// credentials redacted (store.Redact). A non-empty Version is the version
// to open: an S3 VersionId, old or current, that the bucket keeps; any
// other version must be the object's current one, or Open fails.
//
// A client whose daemon died (or handed over to another) opens its objects
// again with Cache set: the cache file it maps travels last, after the
// object's fd if any, and the daemon adopts it, warm, instead of making a
// new one. It cannot tell what bytes the file holds, so that cache serves
// only the clients that hand back that file: another Open of the object
// gets a cache of its own, read from the store. Version and Size are then the ones the mapping shows; an object
// that has changed since is not an error, but every page the cache does not
// hold gets SIGBUS, as a change under a live mapping does.
type Open struct {
	URI     string `json:"uri"`
	Version string `json:"version,omitempty"`
	Cache   bool   `json:"cache,omitempty"`
	Size    int64  `json:"size,omitempty"`
}

// OpenReply carries the object's handle, size and version; the cache's memfd,
// opened read-only, travels with it.
type OpenReply struct {
	Handle  uint64 `json:"handle"`
	Size    int64  `json:"size"`
	Version string `json:"version"`
}

// Attach asks the daemon to serve the faults of [Addr, Addr+Len) of the
// client's memory, which maps the object from byte Offset; the client's
// userfaultfd, with the range registered MISSING, travels with it. Features
// are the ones the client negotiated in UFFDIO_API. The daemon wakes the
// range once it serves it: faults a dead daemon had read and never
// answered run again and reach it.
type Attach struct {
	Handle   uint64 `json:"handle"`
	Addr     uint64 `json:"addr"`
	Len      uint64 `json:"len"`
	Offset   int64  `json:"offset"`
	Features uint64 `json:"features"`
	Advice   string `json:"advice,omitempty"`
}

// AttachReply names the attached region.
type AttachReply struct {
	Region uint64 `json:"region"`
}

// Advise passes madvise-style advice for a region or a byte range of it.
type Advise struct {
	Region uint64 `json:"region"`
	Advice string `json:"advice"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
}

// Detach stops serving a region; the client unmaps it after the reply.
type Detach struct {
	Region uint64 `json:"region"`
}

// Close drops a handle from Open.
type Close struct {
	Handle uint64 `json:"handle"`
}

// Resume asks a daemon that took over from a dead or retiring one for a
// region that one served for this client process: the new daemon serves it
// already (it took the uffd from the old one's keeper), and the session
// that resumes it may now advise and detach it under the same Region id.
type Resume struct {
	Region uint64 `json:"region"`
}

// ResumeReply names the handle of the resumed region's object.
type ResumeReply struct {
	Handle uint64 `json:"handle"`
}

// Empty is the payload of requests and replies that carry nothing.
type Empty struct{}

// Error is the payload of a TError frame.
type Error struct {
	Op      string `json:"op"`
	Message string `json:"message"`
}

// Error is the daemon's message alone: the caller, who made the request,
// names the operation in its own words, and would otherwise say it twice.
func (e *Error) Error() string { return e.Message }

// Dropped says what a TDrop emptied.
type Dropped struct {
	Bytes   int64 `json:"bytes"`   // cached bytes punched out; pages being read are kept
	Objects int   `json:"objects"` // objects whose caches held any
}

// Objects lists the objects whose caches a daemon holds (TObjects), as
// fincore(1) lists a file's pages in the kernel's page cache: the caller's
// own objects, or every uid's for root.
type Objects struct {
	Objects []ObjectStat `json:"objects"`
}

// ObjectStat is one object's cache.
type ObjectStat struct {
	URI        string `json:"uri"` // a local file's path, or a remote object's URI, credentials redacted
	Version    string `json:"version"`
	Size       int64  `json:"size"`
	CacheBytes int64  `json:"cache_bytes"` // resident in the cache
	Users      int    `json:"users"`       // open handles and mapped regions; 0: idle, kept for the next Open
	Uid        uint32 `json:"uid"`
}

// Stats are the daemon's counters.
type Stats struct {
	MajorFaults    uint64 `json:"major_faults"`    // faults that needed store I/O
	MinorFaults    uint64 `json:"minor_faults"`    // faults served from the cache or by another fault's read
	SIGBUS         uint64 `json:"sigbus"`          // pages poisoned after a failed read
	StoreReads     uint64 `json:"store_reads"`     // ReadAt calls on stores
	StoreBytes     uint64 `json:"store_bytes"`     // bytes those reads returned
	StoreErrors    uint64 `json:"store_errors"`    // reads that failed
	CacheBytes     int64  `json:"cache_bytes"`     // bytes resident in all memfds
	CacheBudget    int64  `json:"cache_budget"`    // the bound on CacheBytes; 0 for none
	Evictions      uint64 `json:"evictions"`       // extents evicted to stay in the budget
	EvictedBytes   uint64 `json:"evicted_bytes"`   // bytes they held
	Refaults       uint64 `json:"refaults"`        // misses on pages evicted recently
	MetadataBytes  int64  `json:"metadata_bytes"`  // page-state tables
	Objects        int    `json:"objects"`         // caches held
	IdleObjects    int    `json:"idle_objects"`    // of them, those no client has open
	Clients        int    `json:"clients"`         // connected sessions, the asker's not counted
	Regions        int    `json:"regions"`         // attached regions
	FillsInFlight  int64  `json:"fills_in_flight"` // fills claimed and not ended: reading, or waiting for a read buffer
	ProtocolErrors uint64 `json:"protocol_errors"` // connections closed for bad frames

	// The daemon's read buffers: bytes lent to fills or kept for reuse,
	// their bound (a share of the cache budget), and the fills that had to
	// wait for one.
	FillBufferBytes int64  `json:"fill_buffer_bytes"`
	FillBufferLimit int64  `json:"fill_buffer_limit"`
	FillBufferWaits uint64 `json:"fill_buffer_waits"`

	// Reads of local files in flight, in bytes; the bound on readahead's
	// (0: none), and the readahead reads that waited for room under it.
	DiskReadBytes           int64  `json:"disk_read_bytes"`
	DiskReadaheadLimit      int64  `json:"disk_readahead_limit"`
	DiskReadaheadQueueWaits uint64 `json:"disk_readahead_queue_waits"`

	// HugeExtents counts 2 MiB extents collapsed into huge folios in the
	// background; CollapsesPending are waiting for or in a collapse now;
	// CollapsesFailed stayed in 4 KiB pages.
	HugeExtents      uint64 `json:"huge_extents"`
	CollapsesPending int64  `json:"collapses_pending"`
	CollapsesFailed  uint64 `json:"collapses_failed"`

	// Remote objects (http(s)://, s3://): ranged requests made, whatever
	// their outcome; the bytes they asked for; fetches tried again;
	// second requests started for stragglers; and fills that failed
	// because their object changed since it was opened (its pages not
	// cached got SIGBUS).
	RemoteRequests     uint64 `json:"remote_requests"`
	RemoteRequestBytes uint64 `json:"remote_request_bytes"`
	RemoteRetries      uint64 `json:"remote_retries"`
	RemoteHedges       uint64 `json:"remote_hedges"`
	ObjectChanged      uint64 `json:"object_changed"`

	// DiskCache is the disk cache of remote objects (serve --disk-cache),
	// nil without one. DiskCacheOff says why there is none when one was
	// asked for (at start its file system was read-only, failing, or too
	// full to make the directory in).
	DiskCache    *DiskCacheStats `json:"disk_cache,omitempty"`
	DiskCacheOff string          `json:"disk_cache_off,omitempty"`

	// FaultLatency is fault service time by kind (major, minor, marker),
	// and the latency of store reads ("store").
	FaultLatency map[string]Latency `json:"fault_latency,omitempty"`
}

// DiskCacheStats are the disk cache's counters since the daemon started,
// and what it holds now.
type DiskCacheStats struct {
	Dir          string `json:"dir"`
	Hits         uint64 `json:"hits"`          // chunk loads and scattered reads served from disk, checksums verified
	MemHits      uint64 `json:"mem_hits"`      // chunk loads served from the verified chunks kept in memory
	Misses       uint64 `json:"misses"`        // chunk loads fetched from the remote store
	BytesRead    uint64 `json:"bytes_read"`    // bytes read from disk by hits
	BytesWritten uint64 `json:"bytes_written"` // chunk bytes written to disk

	Corrupt        uint64 `json:"corrupt"`         // chunks that failed their checks on disk: dropped, fetched again, never served
	CorruptIndexes uint64 `json:"corrupt_indexes"` // index files found damaged at start: their objects' chunks dropped
	WriteErrors    uint64 `json:"write_errors"`    // chunks, or objects' files, that could not be written (a full or failing disk): served, not cached
	Uncached       uint64 `json:"uncached"`        // chunks not written: the budget was all in use at that moment
	Evictions      uint64 `json:"evictions"`       // chunks dropped to stay within the budget, or superseded

	Bytes    int64 `json:"bytes"`     // chunk bytes on disk, each rounded up to 4 KiB
	MaxBytes int64 `json:"max_bytes"` // the budget (--disk-cache-size)
	Objects  int   `json:"objects"`   // object versions with files in the directory
}

// Latency summarises a latency histogram.
type Latency struct {
	Count  uint64  `json:"count"`
	P50Us  float64 `json:"p50_us"`
	P99Us  float64 `json:"p99_us"`
	MeanUs float64 `json:"mean_us"`
}

// Marshal encodes a payload.
func Marshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("proto: marshal %T: %v", v, err)) // our own types always encode
	}
	return b
}

// Unmarshal decodes a payload. Unknown fields are ignored, so a newer peer
// may add some within one protocol version.
func Unmarshal(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %T: %w", v, err)
	}
	return nil
}
