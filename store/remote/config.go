package remote

import (
	"context"
	"errors"
	"time"

	"github.com/filemap/filemap/store"
)

// Defaults of Config.
const (
	DefaultChunkSize   = 2 << 20
	DefaultParallel    = 64
	DefaultMaxInflight = 256 << 20
	DefaultCacheChunks = 16
	DefaultTimeout     = 10 * time.Second
	DefaultRetries     = 4
	DefaultBackoffBase = 50 * time.Millisecond
	DefaultBackoffMax  = 2 * time.Second
	DefaultSmallRead   = 256 << 10
	DefaultSubRange    = 256 << 10
	DefaultHoldGap     = 1 << 20
	DefaultMaxRequest  = 8 << 20

	// hedgeFloor is the least adaptive hedge delay: below it a hedge
	// would mostly duplicate requests that were about to finish anyway.
	hedgeFloor = 20 * time.Millisecond
	// hedgeFactor times the median latency of recent requests of the
	// same size class is how long a request may take before it is hedged.
	hedgeFactor = 3
	// hedgeMinSamples is how many latencies adaptive hedging needs before
	// it hedges at all: without them it cannot tell a straggler.
	hedgeMinSamples = 8
)

const pageSize = 4096

// Config tunes a Store. The zero Config is the defaults.
type Config struct {
	// ChunkSize is the unit of fetching and of single-flight, rounded up
	// to a multiple of 4096. 1–4 MiB suits object stores, whose requests
	// cost a round trip plus the transfer. Default 2 MiB.
	ChunkSize int

	// Parallel bounds the ranged requests in flight, hedges included.
	// From 2 on, one of them is kept for demand reads. Within it the
	// Store finds how many its network needs: it starts with 16 and
	// doubles them while each round of requests brings 20 % more bytes a
	// second than the best before (see depth). Default 64.
	Parallel int

	// MaxInflight bounds the bytes of the requests in flight, hedges
	// included: the buffers they fill. Readahead leaves a chunk's worth
	// of it to demand reads. Default 256 MiB; at least MaxRequest and a
	// chunk.
	MaxInflight int64

	// Timeout bounds one request. Default 10 s.
	Timeout time.Duration

	// Retries is how many times a failed fetch is tried again; 0 is the
	// default (4) and a negative value means never.
	Retries int

	// BackoffBase and BackoffMax shape the wait before retry n: a uniform
	// random time in [0, min(BackoffMax, BackoffBase<<n)) ("full jitter",
	// so that clients failed together do not retry together). Defaults
	// 50 ms and 2 s.
	BackoffBase, BackoffMax time.Duration

	// HedgeAfter is how long a request may run before an identical second
	// one is started; whichever answers first wins and the other is
	// cancelled. 0 means adaptive: 3 times the median latency of recent
	// requests of the same size class, at least 20 ms, and no hedging
	// until a few latencies are known. Negative turns hedging off.
	HedgeAfter time.Duration

	// SmallRead is the largest ReadAt that counts as a demand read: a
	// fault waiting for its page, rather than readahead. Demand reads are
	// served before larger ones and may fetch less than a chunk (see
	// SubRange). Default 256 KiB; negative makes no read a demand read.
	SmallRead int

	// SubRange is the alignment of a partial-chunk fetch: a demand read
	// whose chunk nobody is fetching and that is not cached fetches only
	// the SubRange-aligned span around itself, or only its own pages once
	// recent demand reads have had no neighbours within SubRange of them
	// (see locality). Default 256 KiB; negative always fetches whole
	// chunks.
	SubRange int

	// HoldGap is the widest gap between two ranges of one chunk that a
	// Hold fetches along with them, in one request, rather than paying a
	// second request: about what the link moves in the time a request
	// costs beyond its transfer. Default 1 MiB: S3 answers in 20–50 ms at
	// 50–100 MB/s a connection (1–5 MB), and the local versitygw of
	// BenchmarkRestoreS3 came out at about 1.8 ms and 460 MiB/s (0.8 MiB);
	// there a 10 % working set scattered over 512 MiB was resident in
	// 5.5–6 s held with gaps of 64 KiB or none (2300–2900 requests), and
	// 1.6 s with 1 or 4 MiB (260 requests, nearly every chunk whole).
	// Negative merges only ranges that touch.
	HoldGap int

	// MaxRequest bounds the bytes of one request for a run of chunks that
	// a readahead window wants (see Prefetch): one request for several
	// chunks costs the server and the client one request's work instead of
	// several. Default 8 MiB; at most a chunk turns the grouping off.
	//
	// Measured scanning a 512 MiB object of the local versitygw through a
	// mapping (two CPUs shared by server, daemon and client): versitygw
	// spent 730-770 ms of CPU a scan in 2 MiB requests and 420-540 ms in
	// 8 MiB ones.
	MaxRequest int

	// CacheChunks is how many chunks' worth of recently fetched bytes are
	// kept, so that a fault followed by its neighbours does not fetch one
	// chunk twice. It is deliberately small: the page cache is filemap's
	// memfd. Default 16, or 2*Parallel if that is less.
	CacheChunks int

	// Observer is told about every request; nil for none.
	Observer Observer
}

// withDefaults returns c with its unset fields set to the defaults and
// its sizes made page multiples.
func (c Config) withDefaults() Config {
	orDefault(&c.ChunkSize, DefaultChunkSize)
	c.ChunkSize = roundUp(c.ChunkSize, pageSize)
	orDefault(&c.Parallel, DefaultParallel)
	orDefault(&c.Timeout, DefaultTimeout)
	if c.Retries == 0 {
		c.Retries = DefaultRetries
	}
	c.Retries = max(c.Retries, 0)
	orDefault(&c.BackoffBase, DefaultBackoffBase)
	orDefault(&c.BackoffMax, DefaultBackoffMax)
	if c.SmallRead == 0 {
		c.SmallRead = DefaultSmallRead
	}
	if c.SubRange == 0 {
		c.SubRange = DefaultSubRange
	}
	if c.SubRange > 0 {
		c.SubRange = roundUp(c.SubRange, pageSize)
	}
	if c.HoldGap == 0 {
		c.HoldGap = DefaultHoldGap
	}
	c.HoldGap = roundUp(max(c.HoldGap, 0), pageSize)
	orDefault(&c.MaxRequest, DefaultMaxRequest)
	c.MaxRequest = max(c.MaxRequest/c.ChunkSize, 1) * c.ChunkSize
	orDefault(&c.MaxInflight, DefaultMaxInflight)
	c.MaxInflight = max(c.MaxInflight, int64(c.MaxRequest+c.ChunkSize))
	orDefault(&c.CacheChunks, min(DefaultCacheChunks, 2*c.Parallel))
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	return c
}

// PrimeBytes is how many of an object's first bytes its Open should bring
// (see Primer): what a first fault there fetches, the SubRange around it.
func (c Config) PrimeBytes() int {
	c = c.withDefaults()
	if c.SubRange > 0 {
		return c.SubRange
	}
	return c.ChunkSize
}

// orDefault sets *v to def unless it is positive.
func orDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

func roundUp(n, to int) int { return (n + to - 1) / to * to }

// Observer is told what the requests of a Store do, so that metrics can be
// hung on it. Calls come from many goroutines at once and must be quick.
type Observer interface {
	// Request reports one ranged request when it ends.
	Request(r RequestStats)
	// Retry reports that a fetch is tried again after an attempt failed
	// with an error of this kind.
	Retry(kind ErrorKind)
	// Hedge reports that a second request was started for a straggler.
	Hedge()
}

// RequestStats describes one finished ranged request.
type RequestStats struct {
	Bytes   int           // bytes asked for
	Latency time.Duration // from start to answer
	Hedge   bool          // the second request of a hedged pair
	Err     ErrorKind     // ErrNone on success
}

// ErrorKind classifies a request's outcome for metrics labels.
type ErrorKind string

const (
	ErrNone      ErrorKind = ""
	ErrTimeout   ErrorKind = "timeout"   // the request ran out of Timeout
	ErrCanceled  ErrorKind = "canceled"  // a hedge was won by the other request, or the store closed
	ErrChanged   ErrorKind = "changed"   // the object no longer has its version
	ErrPermanent ErrorKind = "permanent" // any other error a retry cannot cure
	ErrTransient ErrorKind = "transient" // 5xx, resets, short bodies: retried
)

// Kind classifies err.
func Kind(err error) ErrorKind {
	switch {
	case err == nil:
		return ErrNone
	case errors.Is(err, store.ErrChanged):
		return ErrChanged
	case store.IsPermanent(err):
		return ErrPermanent
	case errors.Is(err, context.DeadlineExceeded):
		return ErrTimeout
	case errors.Is(err, context.Canceled):
		return ErrCanceled
	default:
		return ErrTransient
	}
}

type nopObserver struct{}

func (nopObserver) Request(RequestStats) {}
func (nopObserver) Retry(ErrorKind)      {}
func (nopObserver) Hedge()               {}
