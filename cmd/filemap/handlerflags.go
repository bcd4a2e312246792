package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/filemap/filemap/fault"
	"github.com/filemap/filemap/pagecache"
	"github.com/filemap/filemap/reclaim"
	"github.com/filemap/filemap/server"
)

// handlerOpts are the settings `serve` and `firecracker` share: the
// socket's mode, how the handler reads ahead, caches, retries and logs, and
// where it serves metrics. Sizes are in pages where the handlers' configs
// want pages, and a 0 meaning "no bound" on the command line is -1 here,
// as the configs want it.
type handlerOpts struct {
	perm       os.FileMode
	uid, gid   int // the socket's owner; -1 leaves it the daemon's
	raPages    int64
	raMaxPages int64
	raInflight int64
	cacheBytes int64
	policy     reclaim.Policy
	retries    int
	backoff    time.Duration
	// faultTimeout is --fault-timeout as given: 0 is no bound.
	faultTimeout time.Duration
	log          *slog.Logger
	metrics      string

	// As given, for the start-up log line.
	ra, raMax, inflight byteSize
	policyName          string
}

// handlerFlags defines the shared flags on fs, with a readahead window of
// ra bytes by default and modeHelp saying who the socket is for, and
// returns the function that checks them once fs is parsed.
func handlerFlags(fs *flag.FlagSet, ra byteSize, raHelp, modeHelp string) func() (handlerOpts, error) {
	mode := fs.String("socket-mode", "0600", modeHelp)
	owner := fs.String("socket-owner", "", "USER[:GROUP], names or numbers, to own the socket (needs CAP_CHOWN), e.g. the uid a jailed Firecracker runs as; default: the daemon's")
	fs.Var(&ra, "readahead", raHelp)
	raMax := byteSize(8 << 20)
	fs.Var(&raMax, "readahead-max", "largest window a sequential reader's readahead ramps up to, in bytes")
	inflight := byteSize(server.DefaultReadaheadInflight)
	fs.Var(&inflight, "readahead-inflight", "bound on the bytes of readahead reads in flight to local files, all together, so that a fault's own read, which is never held back, does not queue behind a scan's (0: no bound)")
	cacheSize := byteSize(server.DefaultCacheBytes())
	fs.Var(&cacheSize, "cache-size", "bound on the bytes all caches hold together; the default is half of this machine's memory, 0 is no bound")
	policy := fs.String("cache-policy", string(reclaim.S3FIFO), "what to evict: s3fifo (scan-resistant, refault-aware) or fifo")
	retries := fs.Int("retries", 3, "re-reads of a failing page before its faulting access gets SIGBUS (a remote object's page is retried by its requests instead: --remote-retries)")
	backoff := fs.Duration("retry-backoff", 10*time.Millisecond, "delay before the first re-read, doubled after each")
	faultTimeout := fs.Duration("fault-timeout", fault.DefaultTimeout, "bound on a fault's time: a page not read by then gets SIGBUS, and every request, read\n"+
		"and retry for it stops (a hung read of a network or FUSE file system is abandoned); 0: none")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	metrics := fs.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464)")
	return func() (handlerOpts, error) {
		o := handlerOpts{ra: ra, raMax: raMax, inflight: inflight, policyName: *policy, metrics: *metrics,
			raPages: int64(ra) / pagecache.PageSize, raMaxPages: int64(raMax) / pagecache.PageSize,
			raInflight: noLimit(int64(inflight)), cacheBytes: int64(cacheSize),
			policy: reclaim.Policy(*policy), retries: *retries, backoff: *backoff, faultTimeout: *faultTimeout}
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(*level)); err != nil {
			return o, fmt.Errorf("--log-level: %w", err)
		}
		perm, err := strconv.ParseUint(*mode, 8, 32)
		if err != nil || perm > 0o777 {
			return o, fmt.Errorf("--socket-mode %q: want an octal mode such as 0600", *mode)
		}
		switch {
		case ra < pagecache.PageSize || ra%pagecache.PageSize != 0:
			return o, fmt.Errorf("--readahead %d: at least one page, a multiple of %d bytes", ra, pagecache.PageSize)
		case raMax < ra:
			return o, fmt.Errorf("--readahead-max %d is smaller than --readahead %d", raMax, ra)
		case *retries < 0:
			return o, fmt.Errorf("--retries %d: must be 0 or more", *retries)
		case *faultTimeout < 0:
			return o, fmt.Errorf("--fault-timeout %v: must be 0 (none) or more", *faultTimeout)
		}
		if *retries == 0 {
			o.retries = -1 // none; 0 is the default in the configs
		}
		o.perm = os.FileMode(perm)
		if o.uid, o.gid, err = parseOwner(*owner); err != nil {
			return o, fmt.Errorf("--socket-owner %q: %w", *owner, err)
		}
		o.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
		return o, nil
	}
}

// parseOwner reads USER[:GROUP], each a name or a number; an empty part is
// -1, which chown leaves as it is.
func parseOwner(s string) (uid, gid int, err error) {
	u, g, _ := strings.Cut(s, ":")
	if uid, err = lookupID(u, func(name string) (string, error) {
		usr, err := user.Lookup(name)
		if err != nil {
			return "", err
		}
		return usr.Uid, nil
	}); err != nil {
		return -1, -1, err
	}
	gid, err = lookupID(g, func(name string) (string, error) {
		grp, err := user.LookupGroup(name)
		if err != nil {
			return "", err
		}
		return grp.Gid, nil
	})
	return uid, gid, err
}

// lookupID is the id s names: -1 if empty, s if a number, else what
// lookup finds for the name.
func lookupID(s string, lookup func(string) (string, error)) (int, error) {
	if s == "" {
		return -1, nil
	}
	id, err := strconv.Atoi(s)
	if err != nil {
		if s, err = lookup(s); err != nil {
			return -1, err
		}
		id, err = strconv.Atoi(s)
	}
	if err == nil && id < 0 {
		err = fmt.Errorf("negative id %d", id)
	}
	return id, err
}

// chownSocket gives the socket at path the owner --socket-owner names.
func (o handlerOpts) chownSocket(path string) error {
	if o.uid == -1 && o.gid == -1 {
		return nil
	}
	if err := os.Chown(path, o.uid, o.gid); err != nil {
		return fmt.Errorf("--socket-owner: %w", err)
	}
	return nil
}
