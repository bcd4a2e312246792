package remote

import "time"

// How the depth adapts (see depth).
const (
	// startDepth is the requests in flight a Store starts with: as many
	// 8 MiB requests as fill a link of 300 MB/s when a connection brings
	// 25 MB/s after 40 ms (BenchmarkRemote's far profile; S3 across
	// regions). Starting lower cost that profile's scan of 1 GiB half a
	// second, two rounds of 375 ms requests, to find it.
	startDepth = 16
	// depthGain is how much more a round must bring than the best before
	// it for the depth to double again.
	depthGain = 1.2
	// depthFlat is how many rounds in a row that do not is the plateau.
	depthFlat = 2
	// depthProbe is how many full rounds a settled depth runs before it
	// tries twice as many requests again.
	depthProbe = 32
)

// depth is how many requests a Store keeps in flight: the bandwidth-delay
// product of its network, in requests. An object store caps each
// connection (50-100 MB/s on S3) and answers after tens of milliseconds,
// so a link of some hundreds of MB/s needs many requests in flight, and
// how many depends on the network, which the Store cannot know in advance.
//
// So it measures, in rounds of as many requests as the depth. A round is
// full if every one of its requests ended with other fetches waiting for a
// slot: the depth, not the readers, bounded the requests. A full round's
// bytes a second, over the time from the end of the round before, is what
// that depth brings. As TCP's slow start doubles its window each round
// trip until a loss, the depth doubles after each full round that brings
// depthGain times the best round so far; after depthFlat full rounds that
// do not, the link (or the server) is full, and the depth settles at that
// of the best round: the least that brings about as much, since more
// requests in flight only share the link. A settled depth tries twice as many requests again
// every depthProbe full rounds, in case the network has room now. The bytes
// in flight are bounded apart from it (Config.MaxInflight).
type depth struct {
	limit, min, max int

	round int       // requests ended in this round
	start time.Time // when the round began: the end of the one before
	bytes int64     // bytes this round's requests brought
	full  bool      // every request of this round ended with fetches waiting

	best    float64 // bytes a second of the last full round that grew the depth
	bestAt  int     // the depth of that round
	flat    int     // full rounds since one beat best by depthGain
	settled int     // full rounds since the depth settled; -1 while it grows
}

func newDepth(most int) depth {
	d := min(startDepth, most)
	return depth{limit: d, min: d, max: most, settled: -1}
}

// ended records a request that ended at now having brought got bytes;
// backlog says whether fetches were waiting for a slot.
func (d *depth) ended(now time.Time, got int64, backlog bool) {
	if d.max == d.min {
		return
	}
	if d.start.IsZero() {
		d.start, d.full = now, true
		return
	}
	d.round++
	d.bytes += got
	d.full = d.full && backlog
	if d.round < d.limit {
		return
	}
	elapsed := now.Sub(d.start)
	rate, full := float64(d.bytes)/max(elapsed.Seconds(), 1e-9), d.full
	d.round, d.bytes, d.start, d.full = 0, 0, now, true
	if full {
		d.judge(rate)
	}
}

// judge moves the depth after a full round that brought rate bytes a
// second.
func (d *depth) judge(rate float64) {
	if d.settled >= 0 {
		if d.settled++; d.settled >= depthProbe && d.limit < d.max {
			d.best, d.bestAt, d.flat, d.settled = rate, d.limit, 0, -1
			d.limit = min(2*d.limit, d.max)
		}
		return
	}
	if rate >= depthGain*d.best {
		d.best, d.bestAt, d.flat = rate, d.limit, 0
		d.limit = min(2*d.limit, d.max)
		return
	}
	if d.flat++; d.flat >= depthFlat {
		d.limit, d.settled = max(d.bestAt, d.min), 0
	}
}
