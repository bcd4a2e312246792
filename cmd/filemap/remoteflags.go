package main

import (
	"flag"
	"fmt"

	"github.com/filemap/filemap/server"
	"github.com/filemap/filemap/store/remote"
	"github.com/filemap/filemap/store/s3store"
)

// remoteFlags adds serve's flags for http(s):// and s3:// objects to fs and
// returns the function that makes their configuration once fs is parsed.
func remoteFlags(fs *flag.FlagSet) func() (server.RemoteConfig, error) {
	endpoint := fs.String("s3-endpoint", "", "S3-compatible endpoint, e.g. http://127.0.0.1:7070 (default: $AWS_ENDPOINT_URL, else AWS)")
	addressing := fs.String("s3-addressing", "auto", "S3 URL style: path, virtual, or auto (path style when an endpoint is set)")
	region := fs.String("s3-region", "", "S3 region (default: the AWS SDK's chain: $AWS_REGION, the shared config; us-east-1 with an endpoint)")
	chunk := byteSize(remote.DefaultChunkSize)
	fs.Var(&chunk, "remote-chunk", "unit of remote fetches: one ranged request, 1M to 4M suit object stores")
	maxReq := byteSize(remote.DefaultMaxRequest)
	fs.Var(&maxReq, "remote-max-request", "largest ranged request for a run of chunks that a sequential reader's readahead wants; at most --remote-chunk turns grouping off")
	parallel := fs.Int("remote-parallel", remote.DefaultParallel, "most ranged requests in flight per remote object; within it, as many as the network rewards (16 to start)")
	inflight := byteSize(remote.DefaultMaxInflight)
	fs.Var(&inflight, "remote-inflight", "bound on the bytes of the ranged requests in flight per remote object")
	timeout := fs.Duration("remote-timeout", remote.DefaultTimeout, "bound on one ranged request (all of a fault's end at --fault-timeout)")
	retries := fs.Int("remote-retries", remote.DefaultRetries, "retries of a failed ranged request, with exponential backoff and jitter; a chunk that keeps failing\n"+
		"is then narrowed down to the pages that fail, which alone get SIGBUS")
	hedge := fs.Duration("remote-hedge", 0, "start a second request for one still running after this long (0: adaptive, 3× the recent median; negative: never)")
	diskDir := fs.String("disk-cache", "", "keep fetched chunks of remote objects in sparse files in this directory, checksummed, across restarts")
	diskSize := byteSize(0)
	fs.Var(&diskSize, "disk-cache-size", "bound on the bytes --disk-cache holds (required with it)")
	return func() (server.RemoteConfig, error) {
		var c server.RemoteConfig
		switch *addressing {
		case "auto":
			c.S3.Addressing = s3store.AddressingAuto
		case "path":
			c.S3.Addressing = s3store.PathStyle
		case "virtual":
			c.S3.Addressing = s3store.VirtualHosted
		default:
			return c, fmt.Errorf("--s3-addressing %q: want path, virtual or auto", *addressing)
		}
		c.S3.Endpoint, c.S3.Region = *endpoint, *region
		if chunk < 4096 || chunk > 64<<20 {
			return c, fmt.Errorf("--remote-chunk %d: want 4K to 64M", chunk)
		}
		if maxReq < 0 || maxReq > 256<<20 {
			return c, fmt.Errorf("--remote-max-request %d: want 0 to 256M", maxReq)
		}
		if *parallel < 1 || *parallel > 256 {
			return c, fmt.Errorf("--remote-parallel %d: want 1 to 256", *parallel)
		}
		if inflight < max(maxReq, chunk)+chunk {
			return c, fmt.Errorf("--remote-inflight %d: want at least --remote-max-request and --remote-chunk (%d)", inflight, max(maxReq, chunk)+chunk)
		}
		if *timeout <= 0 {
			return c, fmt.Errorf("--remote-timeout %v: must be positive", *timeout)
		}
		if *retries < 0 {
			return c, fmt.Errorf("--remote-retries %d: must be 0 or more", *retries)
		}
		c.Fetch = remote.Config{ChunkSize: int(chunk), MaxRequest: max(int(maxReq), int(chunk)), Parallel: *parallel, MaxInflight: int64(inflight),
			Timeout: *timeout, Retries: *retries, HedgeAfter: *hedge}
		if *retries == 0 {
			c.Fetch.Retries = -1
		}
		switch {
		case *diskDir == "" && diskSize != 0:
			return c, fmt.Errorf("--disk-cache-size without --disk-cache DIR")
		case *diskDir != "" && diskSize <= 0:
			return c, fmt.Errorf("--disk-cache %s: give its bound with --disk-cache-size", *diskDir)
		}
		c.DiskCache, c.DiskCacheBytes = *diskDir, int64(diskSize)
		return c, nil
	}
}
