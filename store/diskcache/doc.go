// Package diskcache is filemap's fscache: a bounded local disk tier under
// remote stores, so that a restarted daemon, or the next daemon on the host,
// finds the chunks an earlier one fetched instead of fetching them again.
//
// In the kernel, a network file system (NFS, CIFS, AFS, Ceph, 9p) hands the
// pages it reads to fscache, whose cachefiles backend keeps them in ordinary
// files on a local file system, one cache file per network file, which
// cachefilesd culls to keep a configured share of the disk free; on a later
// miss in the page cache the network file system asks fscache before the
// network. diskcache stands in the same place: Cache.Wrap puts it between
// filemap's page cache (the memfd) and a store.Store, usually a store/remote
// one, and the chunk files under its directory are the cachefiles. Like
// cachefiles it keys cache files by the object's identity and version (an
// object that changes gets new files, and the old ones are culled first).
// Unlike cachefiles it does not trust its files to be intact: every chunk it
// reads back is checked against a checksum taken when it was written.
//
// # Chunks
//
// Bytes are cached in whole aligned chunks (DefaultChunkSize, 2 MiB, like
// remote.DefaultChunkSize): a miss reads the whole chunk from the wrapped
// store (with store.ReadFull, the last chunk short), so that with equal chunk
// sizes one disk chunk is one remote request, and a hit reads and verifies the
// whole chunk. A few verified chunks are kept in memory (WithMemChunks), so
// that the 4 KiB faults that follow one another through a chunk read the disk
// once. Concurrent reads of one chunk share one fetch or disk read.
//
// A chunk's bytes are checksummed in 64 KiB blocks, so that a small read
// with no neighbour read just before it (a scattered fault, up to 256 KiB)
// reads and verifies only the blocks it needs: 64 KiB of disk, not 2 MiB.
// BenchmarkRestoreS3's on-demand restore (10 % of 512 MiB touched at
// random) through a new cache took 11.2-15.3 s with a checksum per chunk,
// 6.0-6.3 s with one per block, against 4.8 s with no disk cache.
//
// # On-disk format
//
// A cache directory holds a lock file and two files per object version, named
// by the lowercase hex SHA-256 of the object's key and version (each
// length-prefixed, so no two pairs collide by concatenation):
//
//	filemap-diskcache.lock   flock(2)ed by the daemon that uses the directory; holds its pid
//	<sha256>.data            the object's bytes: chunk i at offset i*ChunkSize, a sparse file
//	<sha256>.idx             the index: a header, then one record per chunk
//
// Other files in the directory are left alone. All integers are little
// endian. The index header is
//
//	off  size
//	0    8     magic "FMDCACHE"
//	8    4     format version, 2 (an index of version 1, one checksum a
//	           chunk, is deleted with its data at Open, as no corruption)
//	12   4     chunk size in bytes
//	16   8     object size in bytes
//	24   4     key length K
//	28   4     version length V
//	32   K     key
//	32+K V     version
//	32+K+V 4   CRC32C (Castagnoli) of bytes [0, 32+K+V)
//
// and the records start at the header's length rounded up to 512 bytes, 32
// bytes each, record i at recordsStart + 32*i:
//
//	off  size
//	0    4     CRC32C of chunk i's block checksum table (below)
//	4    4     length of chunk i (ChunkSize, less for the last chunk)
//	8    8     sequence number: when the chunk was last written or read from disk
//	16   12    zero
//	28   4     CRC32C of bytes [0, 28) followed by i as 8 little-endian bytes
//
// A record is present when its own checksum and its length are right; an
// all-zero record (never written, or cleared, or a hole) never is, because no
// chunk has length 0. The record's checksum binds it to its chunk index, so a
// record cannot stand for another chunk.
//
// The block checksum tables follow the records, from the records' end
// rounded up to 512 bytes: chunk i's at tablesStart + 4*B*i, where B is
// ChunkSize/64 KiB rounded up, holding the CRC32C of each 64 KiB block of the
// chunk (the last block short for a chunk that does not end on one), 4 bytes
// each. Bytes of a chunk are served only when its record is present, its
// table matches the record's checksum, and each block read matches its
// entry in the table.
//
// # Crash safety
//
// Nothing is fsynced: the cache is disposable, and a chunk lost to a crash is
// one more fetch. What matters is that a crash never makes wrong bytes look
// right:
//
//   - A chunk is written data first, its block checksums second and its
//     record last. A daemon killed before the record leaves data without a
//     record: a miss. Power lost after all three may leave the record on
//     disk without the data or the checksums (writeback has no order); a
//     checksum then fails on the first read: a miss, counted in
//     Stats.Corrupt, and the chunk is fetched again.
//   - A chunk is dropped (evicted, or found corrupt) record first, hole
//     second. A crash between the two, like a crash between a chunk's data
//     and its record, leaves allocated bytes without a record, which the
//     budget does not count: Open walks each data file's allocated extents
//     (SEEK_DATA/SEEK_HOLE, no data read) and punches those of chunks
//     without a record.
//   - A torn record fails its own checksum: a miss. A torn or damaged header
//     makes the whole index unusable: Open counts it (Stats.CorruptIndexes),
//     logs it and deletes the object's files.
//
// A cache directory is used by one daemon at a time (flock on the lock
// file; the kernel releases it however the daemon dies). Open fails on a
// directory it cannot write, or whose file system cannot punch holes,
// rather than run without caching unnoticed. A full file system is not such
// a directory: a daemon that died with its disk full starts again, serves
// the chunks on disk, and caches new ones once there is room. Nothing the
// cache drops needs room: records are cleared by punching them.
//
// # Bounds
//
// The chunk bytes on disk (each chunk's length rounded up to 4 KiB, the unit
// a file system allocates) never exceed the Cache's maxBytes. Whole chunks are
// evicted in least-recently-used order across all objects, by punching a hole
// in the data file (FALLOC_FL_PUNCH_HOLE, which Open requires of the file
// system) after clearing the record; chunks of a version superseded by a newer
// Wrap of the same key go first, and a superseded version that nobody uses is
// deleted outright. The order survives a restart approximately: records carry
// the sequence number of their chunk's last disk write or disk read (reads
// served from memory are not recorded, which would write the index on every
// fault). The index files are not counted: 32 bytes per chunk and 4 per
// 64 KiB block, 80 KiB per GiB of object, sparse like the data.
//
// # Locks
//
// One lock, Cache.mu, protects every object's index, the chunks in memory
// and the LRU; a hole punch and a record's write run under it. A Store's
// Close takes it and lets it go before it closes the store below. The
// daemon takes it with its own lock held (package server's documentation
// has the whole order).
package diskcache
