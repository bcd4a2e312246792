package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/proto"
	"github.com/filemap/filemap/reclaim"
	"github.com/filemap/filemap/server"
)

func serve(args []string) error {
	fs := newFlags("serve", "[flags]", "Runs the handler daemon: clients of this user that open the same object\n"+
		"share one page cache, and their page faults are served from it.\n\n"+
		"The socket is $FILEMAP_SOCKET, else $XDG_RUNTIME_DIR/filemap/filemap.sock,\n"+
		"else /run/filemap/filemap.sock.\n\n"+
		"Local files are opened by the clients and passed as descriptors. http(s)://\n"+
		"and s3:// objects are fetched by the daemon with its own credentials (for\n"+
		"S3 the AWS SDK's chain: AWS_ACCESS_KEY_ID, AWS_PROFILE, instance roles...),\n"+
		"in chunks of --remote-chunk with --remote-parallel requests in flight, and\n"+
		"each object's version (ETag, VersionId) is pinned when it is opened.")
	socket := fs.String("socket", proto.DefaultSocket(), "Unix socket to listen on")
	mode := fs.String("socket-mode", "0600", "permissions of the socket (0600: this user only)")
	ra := byteSize(128 << 10)
	fs.Var(&ra, "readahead", "read-around window of a miss, in bytes (128K like the kernel)")
	raMax := byteSize(8 << 20)
	fs.Var(&raMax, "readahead-max", "largest window a sequential reader's readahead ramps up to, in bytes")
	cacheSize := byteSize(server.DefaultCacheBytes())
	fs.Var(&cacheSize, "cache-size", "bound on the bytes all caches hold together; the default is half of this machine's memory")
	policy := fs.String("cache-policy", string(reclaim.S3FIFO), "what to evict: s3fifo (scan-resistant, refault-aware) or fifo")
	retries := fs.Int("retries", 3, "re-reads of a failing page before its faulting access gets SIGBUS")
	backoff := fs.Duration("retry-backoff", 10*time.Millisecond, "delay before the first re-read, doubled after each")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464)")
	huge := fs.Bool("huge", true, "keep caches on a private tmpfs whose fully read 2 MiB extents become huge folios (needs CAP_SYS_ADMIN; memfds otherwise)")
	storeTimeout := fs.String("store-timeout", "auto", "a store read still running after this long fails: its faulting page gets SIGBUS after the retries.\n"+
		"auto: "+server.DefaultStoreTimeout.String()+" for files on network and FUSE file systems only; a duration: for every store; 0: never")
	maxObjects := fs.Int("max-objects-per-client", server.DefaultMaxObjectsPerClient, "objects one client process may have open (0: no limit)")
	maxMapped := byteSize(server.DefaultMaxMappedBytesPerClient)
	fs.Var(&maxMapped, "max-mapped-per-client", "bytes of the objects one client process may have open (0: no limit)")
	maxRegions := fs.Int("max-regions-per-client", server.DefaultMaxRegionsPerClient, "regions one client process may have attached (0: no limit)")
	maxFaults := fs.Int("max-faults-per-client", server.DefaultMaxFaultsInFlightPerClient, "faults of one client process worked on at once; its others wait (0: no limit)")
	remoteConfig := remoteFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	remoteCfg, err := remoteConfig()
	if err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	perm, err := strconv.ParseUint(*mode, 8, 32)
	if err != nil || perm > 0o777 {
		return fmt.Errorf("--socket-mode %q: want an octal mode such as 0600", *mode)
	}
	if ra < pagecache.PageSize {
		return fmt.Errorf("--readahead %d: at least one page (%d bytes)", ra, pagecache.PageSize)
	}
	if raMax < ra {
		return fmt.Errorf("--readahead-max %d is smaller than --readahead %d", raMax, ra)
	}
	if *retries < 0 {
		return fmt.Errorf("--retries %d: must be 0 or more", *retries)
	}
	var timeout time.Duration // auto
	if *storeTimeout != "auto" {
		if timeout, err = time.ParseDuration(*storeTimeout); err != nil || timeout < 0 {
			return fmt.Errorf("--store-timeout %q: want auto, a duration such as 30s, or 0", *storeTimeout)
		}
		timeout = noLimit(timeout)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	cfg := server.Config{
		ReadaheadPages: int64(ra) / pagecache.PageSize,
		MaxReadahead:   int64(raMax) / pagecache.PageSize,
		Retries:        *retries,
		RetryBackoff:   *backoff,
		Log:            log,
		CacheBytes:     int64(cacheSize),
		CachePolicy:    reclaim.Policy(*policy),
		NoHuge:         !*huge,
		Remote:         remoteCfg,
		// On the command line 0 is no limit; in server.Config, negative.
		StoreTimeout:               timeout,
		MaxObjectsPerClient:        noLimit(*maxObjects),
		MaxMappedBytesPerClient:    noLimit(int64(maxMapped)),
		MaxRegionsPerClient:        noLimit(*maxRegions),
		MaxFaultsInFlightPerClient: noLimit(*maxFaults),
	}
	if *retries == 0 {
		cfg.Retries = -1
	}
	s, err := server.New(cfg)
	if err != nil {
		return err
	}
	l, err := server.Listen(*socket, os.FileMode(perm))
	if err != nil {
		return err
	}
	if *metricsAddr != "" {
		addr, stop, err := s.Metrics().Serve(*metricsAddr)
		if err != nil {
			l.Close()
			return fmt.Errorf("--metrics %s: %w", *metricsAddr, err)
		}
		defer stop()
		log.Info("filemap serve: metrics", "url", fmt.Sprintf("http://%s/metrics", addr))
	}
	log.Info("filemap serve: listening", "socket", *socket, "mode", fmt.Sprintf("%#o", perm),
		"readahead", int64(ra), "readahead-max", int64(raMax), "retries", *retries,
		"cache-size", size(int64(cacheSize)), "cache-policy", *policy, "store-timeout", *storeTimeout,
		"per-client", fmt.Sprintf("%d objects, %s, %d regions, %d faults in flight", *maxObjects, size(int64(maxMapped)), *maxRegions, *maxFaults))
	if remoteCfg.DiskCache != "" {
		log.Info("filemap serve: disk cache for remote objects", "dir", remoteCfg.DiskCache, "size", size(remoteCfg.DiskCacheBytes))
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s2 := <-sig
		log.Info("filemap serve: shutting down", "signal", s2.String())
		s.Close()
	}()
	err = s.Serve(l)
	s.Close()
	os.Remove(*socket)
	return err
}

// noLimit maps a flag's "0: no limit" to server.Config's negative.
func noLimit[T int | int64 | time.Duration](v T) T {
	if v <= 0 {
		return -1
	}
	return v
}
