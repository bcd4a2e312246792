package diskcache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
)

// The index format; doc.go describes it.
const (
	magic         = "FMDCACHE"
	formatVersion = 2
	headerFixed   = 32  // header bytes before the key
	recordSize    = 32  // bytes per chunk record
	recordAlign   = 512 // records start on a sector, so that no record straddles two
	// blockSize is the unit a chunk's bytes are checksummed in, so that a
	// small read of a chunk on disk reads and checks its blocks, not the
	// chunk: a scattered fault costs 64 KiB of disk, not 2 MiB.
	blockSize = 64 << 10
	// maxIdentity bounds len(key)+len(version): a longer identity is not
	// cached rather than given a huge header.
	maxIdentity = 64 << 10

	lockName   = "filemap-diskcache.lock"
	idxSuffix  = ".idx"
	dataSuffix = ".data"
	stemLen    = 2 * sha256.Size
)

var (
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
	le         = binary.LittleEndian
)

func checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// stemOf names the files of one object version. The lengths are prefixed so
// that ("ab", "c") and ("a", "bc") differ.
func stemOf(key, version string) string {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(key)))])
	h.Write([]byte(key))
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(version)))])
	h.Write([]byte(version))
	return hex.EncodeToString(h.Sum(nil))
}

// isStem reports whether s could be a name stemOf made: only such files are
// ever deleted from the directory.
func isStem(s string) bool {
	if len(s) != stemLen {
		return false
	}
	for _, r := range s {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return false
		}
	}
	return true
}

// header is what an index says about its object.
type header struct {
	key, version string
	size         int64
	chunkSize    int64
}

func (h header) encode() []byte {
	n := headerFixed + len(h.key) + len(h.version)
	b := make([]byte, n+4)
	copy(b, magic)
	le.PutUint32(b[8:], formatVersion)
	le.PutUint32(b[12:], uint32(h.chunkSize))
	le.PutUint64(b[16:], uint64(h.size))
	le.PutUint32(b[24:], uint32(len(h.key)))
	le.PutUint32(b[28:], uint32(len(h.version)))
	copy(b[headerFixed:], h.key)
	copy(b[headerFixed+len(h.key):], h.version)
	le.PutUint32(b[n:], checksum(b[:n]))
	return b
}

// recordsStart is where the records of an index with this identity begin.
func recordsStart(key, version string) int64 {
	return roundUp64(int64(headerFixed+len(key)+len(version)+4), recordAlign)
}

var (
	errShortHeader = errors.New("shorter than its header")
	// errOldFormat is an index an earlier filemap wrote (format 1: one
	// checksum a chunk), not a damaged one.
	errOldFormat = errors.New("an older format")
)

// decodeHeader parses the header at the start of b.
func decodeHeader(b []byte) (header, error) {
	if len(b) < headerFixed+4 {
		return header{}, errShortHeader
	}
	if string(b[:8]) != magic {
		return header{}, fmt.Errorf("bad magic %q", b[:8])
	}
	if v := le.Uint32(b[8:]); v != formatVersion {
		if v > 0 && v < formatVersion {
			return header{}, fmt.Errorf("%w: format version %d, want %d", errOldFormat, v, formatVersion)
		}
		return header{}, fmt.Errorf("format version %d, want %d", v, formatVersion)
	}
	kl, vl := int64(le.Uint32(b[24:])), int64(le.Uint32(b[28:]))
	if kl+vl > maxIdentity {
		return header{}, fmt.Errorf("key and version of %d bytes", kl+vl)
	}
	n := headerFixed + kl + vl
	if int64(len(b)) < n+4 {
		return header{}, errShortHeader
	}
	if got, want := checksum(b[:n]), le.Uint32(b[n:]); got != want {
		return header{}, fmt.Errorf("header checksum %08x, want %08x", got, want)
	}
	h := header{
		key:       string(b[headerFixed : headerFixed+kl]),
		version:   string(b[headerFixed+kl : n]),
		size:      int64(le.Uint64(b[16:])),
		chunkSize: int64(le.Uint32(b[12:])),
	}
	if h.size < 0 || h.chunkSize <= 0 || h.chunkSize%pageSize != 0 {
		return header{}, fmt.Errorf("size %d, chunk size %d", h.size, h.chunkSize)
	}
	return h, nil
}

// sumsStart is where the block checksums of an index with this identity
// and nchunks chunks begin, after the records.
func sumsStart(key, version string, nchunks int64) int64 {
	return roundUp64(recordsStart(key, version)+nchunks*recordSize, recordAlign)
}

// blocksIn is how many blocks a chunk of n bytes has; the last may be
// short.
func blocksIn(n int64) int64 { return (n + blockSize - 1) / blockSize }

// blockSum is the CRC32C of block i of b, bytes from a block boundary.
func blockSum(b []byte, i int64) uint32 {
	return checksum(b[i*blockSize : min((i+1)*blockSize, int64(len(b)))])
}

// blockSums is the checksum table of a chunk's bytes b: the CRC32C of each
// block, 4 bytes each.
func blockSums(b []byte) []byte {
	t := make([]byte, 4*blocksIn(int64(len(b))))
	for i := range blocksIn(int64(len(b))) {
		le.PutUint32(t[4*i:], blockSum(b, i))
	}
	return t
}

// checkBlocks checks b, the blocks of a chunk from block first on, against
// the chunk's checksum table.
func checkBlocks(b []byte, first int64, sums []byte) error {
	for i := range blocksIn(int64(len(b))) {
		got, want := blockSum(b, i), le.Uint32(sums[4*(first+i):])
		if got != want {
			return fmt.Errorf("block %d: checksum %08x, want %08x", first+i, got, want)
		}
	}
	return nil
}

// record is one chunk's entry in the index.
type record struct {
	crc    uint32 // of the chunk's block checksum table
	length uint32
	seq    uint64
}

func (r record) encode(ci int64) [recordSize]byte {
	var b [recordSize]byte
	le.PutUint32(b[0:], r.crc)
	le.PutUint32(b[4:], r.length)
	le.PutUint64(b[8:], r.seq)
	le.PutUint32(b[28:], recordChecksum(b[:28], ci))
	return b
}

func recordChecksum(b []byte, ci int64) uint32 {
	var i [8]byte
	le.PutUint64(i[:], uint64(ci))
	return crc32.Update(checksum(b), castagnoli, i[:])
}

// decodeRecord parses chunk ci's record; ok is false for a record that is
// absent, cleared or damaged. The caller checks the length.
func decodeRecord(b []byte, ci int64) (r record, ok bool) {
	if le.Uint32(b[28:]) != recordChecksum(b[:28], ci) {
		return record{}, false
	}
	return record{crc: le.Uint32(b[0:]), length: le.Uint32(b[4:]), seq: le.Uint64(b[8:])}, true
}

// isZero reports whether b is all zero: a record never written or cleared,
// as opposed to a damaged one.
func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

const pageSize = 4096

func roundUp64(n, to int64) int64 { return (n + to - 1) / to * to }
