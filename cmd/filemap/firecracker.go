package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/filemap/filemap/firecracker"
	"github.com/filemap/filemap/internal/progress"
	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/server"
	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/s3store"
)

func firecrackerCmd(args []string) error {
	fs := newFlags("firecracker", "--socket SOCKET --mem URI [flags]",
		"Serves the page faults of Firecracker microVMs restored from a snapshot with\n"+
			"the Uffd memory backend (\"mem_backend\": {\"backend_type\": \"Uffd\",\n"+
			"\"backend_path\": SOCKET}). Start it before PUT /snapshot/load: it listens on\n"+
			"SOCKET; each VMM connects once and sends its guest memory regions and its\n"+
			"userfaultfd. Pages are read from the memory file URI (a path, http(s)://\n"+
			"or s3://) through one page cache shared by every VM restored from it, and\n"+
			"copied into the guest on its first touch. A balloon's freed memory reads as\n"+
			"zeros. Hugetlbfs guests (2 MiB pages) are served in whole huge pages.\n\n"+
			"--record FILE writes the order of the first restore's first touches;\n"+
			"--prefetch FILE replays such a record into every restore, ahead of the\n"+
			"guest, its own faults first. Both may name the same file.")
	socket := fs.String("socket", "", "Unix socket to listen on (Firecracker's backend_path); required")
	mem := fs.String("mem", "", "the snapshot's memory file: a path, file://, http(s):// or s3:// URI; required")
	memVersion := fs.String("mem-version", "", "restore from this version of --mem only, the one that matches the snapshot's\n"+
		"VM state: an S3 VersionId, old or current; else (an ETag) it must be the current\n"+
		"one, and a restore fails when --mem has moved on (default: the current version\n"+
		"at each restore)")
	record := fs.String("record", "", "write the first restore's working set (first-touch order) to this file")
	prefetch := fs.String("prefetch", "", "replay this working-set record into every restore")
	prefetchBatch := fs.Int("prefetch-batch", firecracker.DefaultPrefetchBatch, "4 KiB pages a replay copies in at a time between the guest's own faults")
	handler := handlerFlags(fs, firecracker.DefaultReadahead*pagecache.PageSize, "bytes read around a miss into the cache (4K: the page alone)",
		"permissions of the socket (under the jailer, chown it to the jailed uid)")
	around := byteSize(firecracker.DefaultCopyAround * pagecache.PageSize)
	fs.Var(&around, "copy-around", "copy the cached neighbours of a fault in its aligned block of this many bytes into the guest with it (4K: the page alone)")
	spin := fs.Duration("spin", 0, "poll a VM's userfaultfd this long before sleeping (saves a wake-up per fault on idle CPUs, costs CPU)")
	keep := fs.Bool("keep", true, "keep every VM's connection and userfaultfd in a keeper process, so that a handler started again on this socket serves them if this one dies")
	remoteConfig := remoteFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	remoteCfg, err := remoteConfig()
	if err != nil {
		return err
	}
	switch {
	case fs.NArg() != 0:
		fs.Usage()
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case *socket == "":
		fs.Usage()
		return fmt.Errorf("--socket is required")
	case *mem == "":
		fs.Usage()
		return fmt.Errorf("--mem is required")
	case around < pagecache.PageSize || around%pagecache.PageSize != 0 || (around/pagecache.PageSize)&(around/pagecache.PageSize-1) != 0:
		return fmt.Errorf("--copy-around %d: a power of two times %d", around, pagecache.PageSize)
	case *prefetchBatch < 1:
		return fmt.Errorf("--prefetch-batch %d: at least 1", *prefetchBatch)
	}
	h, err := handler()
	if err != nil {
		return err
	}
	log := h.log
	open, closeStores, err := memOpener(*mem, *memVersion, remoteCfg, log)
	if err != nil {
		return err
	}
	defer closeStores()
	cfg := firecracker.Config{
		Open:              open,
		Name:              store.Redact(*mem),
		Pinned:            immutableVersion(*mem, *memVersion),
		ReadaheadPages:    h.raPages,
		ReadaheadMaxPages: h.raMaxPages,
		ReadaheadInflight: h.raInflight,
		CopyAround:        int64(around) / pagecache.PageSize,
		CacheBytes:        h.cacheBytes,
		CachePolicy:       h.policy,
		Retries:           h.retries,
		RetryBackoff:      h.backoff,
		FaultTimeout:      noLimit(h.faultTimeout),
		Record:            *record,
		Prefetch:          *prefetch,
		PrefetchBatch:     *prefetchBatch,
		Spin:              *spin,
		Log:               log,
	}
	if progress.IsTerminal(os.Stderr) {
		cfg.Progress = os.Stderr
	}
	// The memory file must open before a VMM is told to connect: an
	// error now is better than one per restore.
	st, err := open(context.Background())
	if err != nil {
		return fmt.Errorf("--mem %s: %w", store.Redact(*mem), err)
	}
	st.Close()
	s, err := firecracker.New(cfg)
	if err != nil {
		return err
	}
	l, err := server.Listen(*socket, h.perm)
	if err != nil {
		s.Close()
		return err
	}
	if err := h.chownSocket(*socket); err != nil {
		l.Close()
		s.Close()
		return err
	}
	if *keep {
		if err := s.Keep(*socket); err != nil {
			l.Close()
			s.Close()
			return err
		}
	}
	if h.metrics != "" {
		addr, stop, err := s.Metrics().Serve(h.metrics)
		if err != nil {
			l.Close()
			s.Close()
			return fmt.Errorf("--metrics %s: %w", h.metrics, err)
		}
		defer stop()
		log.Info("filemap firecracker: metrics", "url", fmt.Sprintf("http://%s/metrics", addr))
	}
	// Before "listening": whoever waits for that line may signal at once.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	log.Info("filemap firecracker: listening", "socket", *socket, "mem", store.Redact(*mem), "record", *record, "prefetch", *prefetch, "fault-timeout", h.faultTimeout,
		"readahead", int64(h.ra), "readahead-inflight", int64(h.inflight), "copy-around", int64(around), "cache-size", size(h.cacheBytes))
	go func() {
		s2 := <-sig
		log.Info("filemap firecracker: shutting down; restored VMs stall on their next fault until a handler starts again on this socket", "signal", s2.String())
		s.Close()
	}()
	err = s.Serve(l)
	s.Close() // finishes the record
	l.Close() // unlinks the socket, unless the path is another's now
	return err
}

// memOpener returns the function that opens the memory file at uri at
// version (if "", at its current version), once per restore, and the
// function that lets go of the clients it shares. Remote objects are read
// as `filemap serve` reads them: in chunks, with retries and hedging,
// optionally through a disk cache.
func memOpener(uri, version string, cfg server.RemoteConfig, log *slog.Logger) (func(context.Context) (store.Store, error), func(), error) {
	open, done, err := memOpenerAt(uri, version, cfg, log)
	if err != nil || version == "" {
		return open, done, err
	}
	return func(ctx context.Context) (store.Store, error) {
		st, err := open(ctx)
		if err == nil && st.Version() != version {
			st.Close()
			return nil, fmt.Errorf("%w: --mem-version %s, and the memory file is now at version %s", store.ErrChanged, version, st.Version())
		}
		return st, err
	}, done, nil
}

// immutableVersion is version if it names bytes that never change, an S3
// VersionId other than "null", so that a restore may use the cache of it
// without asking the store again; else "". An ETag, S3's null version or a
// file's version may stop being current at any time, and each restore must
// check.
func immutableVersion(uri, version string) string {
	if u, err := store.ParseURI(uri); err != nil || u.Scheme != "s3" || !s3store.Immutable(version) {
		return ""
	}
	return version
}

// memOpenerAt is memOpener without its check of the version: an S3 object
// opens at version (an old one by VersionId), any other at its current one.
// A remote object is opened as `filemap serve` opens it (server.Remotes).
func memOpenerAt(uri, version string, cfg server.RemoteConfig, log *slog.Logger) (func(context.Context) (store.Store, error), func(), error) {
	u, err := store.ParseURI(uri)
	if err != nil {
		return nil, nil, fmt.Errorf("--mem: %w", err)
	}
	if u.Scheme == "file" {
		return func(context.Context) (store.Store, error) {
			f, err := store.OpenLocal(u.Path)
			if err != nil {
				return nil, err
			}
			st, err := store.NewFile(f, u.Path)
			if err != nil {
				f.Close()
				return nil, err
			}
			return st, nil
		}, func() {}, nil
	}
	r, err := server.NewRemotes(cfg, log)
	if err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context) (store.Store, error) { return r.Open(ctx, u, version) }, r.Close, nil
}
