package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/filemap/filemap/internal/fdstore"
	"github.com/filemap/filemap/proto"
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
		"each object's version (ETag, VersionId) is pinned when it is opened.\n\n"+
		"Clients survive the daemon: a keeper process holds every attached region,\n"+
		"and a daemon started again on the same socket serves them where this one\n"+
		"stopped, with the cache warm. --takeover starts a new daemon (an upgrade)\n"+
		"that takes the socket and every region from the running one; no fault fails.")
	socket := fs.String("socket", proto.DefaultSocket(), "Unix socket to listen on")
	handler := handlerFlags(fs, 128<<10, "read-around window of a miss, in bytes (128K like the kernel)", "permissions of the socket (0600: this user only)")
	readBuffers := byteSize(0)
	fs.Var(&readBuffers, "read-buffers", "bound on the daemon's read buffers, the bulk of its own memory (0: a quarter of --cache-size, within 4M-64M); readahead waits for them, a fault's own read goes first")
	huge := fs.Bool("huge", true, "keep caches on a private tmpfs whose fully read 2 MiB extents become huge folios (needs CAP_SYS_ADMIN; memfds otherwise)")
	faultTimeout := fs.Duration("fault-timeout", server.DefaultFaultTimeout, "bound on a fault's time: a page not read by then gets SIGBUS, and every request, read\n"+
		"and retry for it stops (a hung read of a network or FUSE file system is abandoned); 0: none")
	storeTimeout := fs.String("store-timeout", "", "deprecated: --fault-timeout, which bounds a fault's every read and retry together")
	maxObjects := fs.Int("max-objects-per-client", server.DefaultMaxObjectsPerClient, "objects one client process may have open (0: no limit)")
	maxMapped := byteSize(server.DefaultMaxMappedBytesPerClient)
	fs.Var(&maxMapped, "max-mapped-per-client", "bytes of the objects one client process may have open (0: no limit)")
	maxRegions := fs.Int("max-regions-per-client", server.DefaultMaxRegionsPerClient, "regions one client process may have attached (0: no limit)")
	maxFaults := fs.Int("max-faults-per-client", server.DefaultMaxFaultsInFlightPerClient, "faults of one client process worked on at once; its others wait (0: no limit)")
	maxIdle := fs.Int("max-idle-caches", server.DefaultMaxIdleCaches, "caches no client has open kept for a later open of the same bytes, the least recently released dropped first (0: none kept)")
	takeover := fs.Bool("takeover", false, "take the socket and every client over from the daemon running on it, which then exits (a graceful upgrade)")
	keep := fs.Bool("keep", true, "keep every region in a keeper process, so that the next daemon on this socket serves this one's clients if it dies")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the daemon, from start to exit, to this file (for go tool pprof)")
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
	h, err := handler()
	if err != nil {
		return err
	}
	log := h.log
	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer func() {
			if err := stop(); err != nil {
				log.Error("filemap serve: --cpuprofile", "err", err)
			}
		}()
	}
	timeout, guardAll, err := faultTimeoutFlags(fs, *faultTimeout, *storeTimeout)
	if err != nil {
		return err
	}
	if *storeTimeout != "" {
		log.Warn("filemap serve: --store-timeout is deprecated; it sets --fault-timeout, which bounds a fault's reads and retries together",
			"fault-timeout", timeout)
	}
	cfg := server.Config{
		ReadaheadPages:    h.raPages,
		MaxReadahead:      h.raMaxPages,
		ReadaheadInflight: h.raInflight,
		Retries:           h.retries,
		RetryBackoff:      h.backoff,
		Log:               log,
		CacheBytes:        h.cacheBytes,
		CachePolicy:       h.policy,
		ReadBuffers:       int64(readBuffers),
		NoHuge:            !*huge,
		Remote:            remoteCfg,
		// On the command line 0 is no limit; in server.Config, negative.
		FaultTimeout:               noLimit(timeout),
		GuardAllStores:             guardAll,
		MaxObjectsPerClient:        noLimit(*maxObjects),
		MaxMappedBytesPerClient:    noLimit(int64(maxMapped)),
		MaxRegionsPerClient:        noLimit(*maxRegions),
		MaxFaultsInFlightPerClient: noLimit(*maxFaults),
		MaxIdleCaches:              noLimit(*maxIdle), // here -1 is none kept
	}
	if *takeover && !*keep {
		return fmt.Errorf("--takeover needs --keep: the regions come from the running daemon's keeper")
	}
	var l *proto.Listener
	start := time.Now()
	if *takeover {
		if l, err = server.Takeover(*socket, 30*time.Second); err != nil {
			return err
		}
	} else if l, err = server.Listen(*socket, h.perm); err != nil {
		return listenError(err, flagGiven(fs, "socket") || os.Getenv("FILEMAP_SOCKET") != "")
	}
	if err := h.chownSocket(*socket); err != nil {
		l.Close()
		return err
	}
	s, err := startServer(cfg, *socket, *keep)
	if err != nil {
		l.Close()
		return err
	}
	if *takeover {
		log.Info("filemap serve: took over", "socket", *socket, "after", time.Since(start))
	}
	if h.metrics != "" {
		addr, stop, err := serveMetrics(s, h.metrics, *takeover)
		if err != nil {
			l.Close()
			return fmt.Errorf("--metrics %s: %w", h.metrics, err)
		}
		defer stop()
		log.Info("filemap serve: metrics", "url", fmt.Sprintf("http://%s/metrics", addr))
	}
	// Before "listening": whoever waits for that line may signal at once.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	log.Info("filemap serve: listening", "socket", *socket, "mode", fmt.Sprintf("%#o", h.perm),
		"readahead", int64(h.ra), "readahead-max", int64(h.raMax), "readahead-inflight", int64(h.inflight), "retries", max(h.retries, 0),
		"cache-size", size(h.cacheBytes), "read-buffers", size(s.Stats().FillBufferLimit), "cache-policy", h.policyName, "max-idle-caches", *maxIdle, "fault-timeout", timeout,
		"per-client", fmt.Sprintf("%d objects, %s, %d regions, %d faults in flight", *maxObjects, size(int64(maxMapped)), *maxRegions, *maxFaults))
	if s.Stats().DiskCache != nil { // else its file system could not be used: logged
		log.Info("filemap serve: disk cache for remote objects", "dir", remoteCfg.DiskCache, "size", size(remoteCfg.DiskCacheBytes))
	}
	go func() {
		s2 := <-sig
		log.Info("filemap serve: shutting down", "signal", s2.String())
		s.Close()
	}()
	err = s.Serve(l)
	s.Close()
	// Unlinks the socket, unless the path is a successor's now: handed
	// over (--takeover), or bound by a daemon started since.
	l.Close()
	return err
}

// listenError is err, a failed listen, with what to do when this
// user may not make a socket there: choose another, which its clients must
// then be told. chosen says the socket was given, not the default.
func listenError(err error, chosen bool) error {
	if !errors.Is(err, os.ErrPermission) {
		return err
	}
	if chosen {
		return fmt.Errorf("%w: this user may not make a socket there; choose one in a directory it may write, with --socket PATH or FILEMAP_SOCKET", err)
	}
	why := ""
	if os.Getenv("XDG_RUNTIME_DIR") == "" {
		why = " (there is no $XDG_RUNTIME_DIR)"
	}
	return fmt.Errorf("%w: this user may not make the default socket%s; choose a socket with --socket PATH, "+
		"and give its clients the same path in FILEMAP_SOCKET", err, why)
}

// flagGiven reports whether the command line set the flag called name.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// startServer makes the daemon and, with keep, takes the regions a
// previous daemon on socket left (waiting for it to close, in a takeover)
// and starts its keeper. The daemon is made first, while the old one still
// serves, unless it has a disk cache, which the old one holds locked.
func startServer(cfg server.Config, socket string, keep bool) (*server.Server, error) {
	if !keep {
		return server.New(cfg)
	}
	var kept []fdstore.Entry
	take := func() {
		var err error
		if kept, err = server.Kept(socket); err != nil {
			// Serving new clients beats exiting: the old ones stall either way.
			cfg.Log.Error("filemap serve: cannot take the previous daemon's regions: their faults stall", "err", err)
		}
	}
	early := cfg.Remote.DiskCache != ""
	if early {
		take()
	}
	s, err := server.New(cfg)
	if err != nil {
		return nil, err
	}
	if !early {
		take()
	}
	s.Keep(socket, kept)
	return s, nil
}

// serveMetrics serves the metrics at addr. In a takeover the old daemon
// may hold addr for a moment longer: try for a few seconds.
func serveMetrics(s *server.Server, addr string, takeover bool) (net.Addr, func() error, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		a, stop, err := s.Metrics().Serve(addr)
		if err == nil || !takeover || time.Now().After(deadline) {
			return a, stop, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// faultTimeoutFlags is the fault timeout that --fault-timeout, or the
// deprecated --store-timeout in its stead, sets, and whether every store's
// reads are guarded against hanging, as an explicit --store-timeout had
// them.
func faultTimeoutFlags(fs *flag.FlagSet, fault time.Duration, store string) (time.Duration, bool, error) {
	if fault < 0 {
		return 0, false, fmt.Errorf("--fault-timeout %v: must be 0 (none) or more", fault)
	}
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "fault-timeout" })
	switch {
	case store == "" || store == "auto":
		return fault, false, nil
	case set:
		return 0, false, fmt.Errorf("--store-timeout is --fault-timeout, deprecated: give only --fault-timeout")
	}
	d, err := time.ParseDuration(store)
	if err != nil || d < 0 {
		return 0, false, fmt.Errorf("--store-timeout %q: want auto, a duration such as 30s, or 0", store)
	}
	return d, d > 0, nil
}

// startCPUProfile starts profiling this process's CPU into a new file at
// path; stop ends it and closes the file.
func startCPUProfile(path string) (stop func() error, err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("profile into %s: %w", path, err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		return nil
	}, nil
}

// noLimit maps a flag's "0: no limit" to server.Config's negative.
func noLimit[T int | int64 | time.Duration](v T) T {
	if v <= 0 {
		return -1
	}
	return v
}
