package remote

// localityRing is how many recent demand fetches locality remembers: enough
// to tell a scattered reader from one with neighbours after a few faults,
// few enough that a scattered reader's faults are rarely near one of them
// by chance (16 × 2 × SubRange of 512 MiB is 1.6 % with the defaults).
const localityRing = 16

// locality tells whether demand reads have neighbours: whether, after a
// demand read started a fetch, another demand read came near it. It keeps
// the last few such reads (not their fetches: a span says nothing of what
// was wanted) and marks each that a later read came within reach of.
//
// Why: a lone fault fetches the SubRange span around itself on the bet that
// its neighbours follow, as they do for a reader that faults page by page
// through a region. A scattered reader (random 4 KiB faults, a fault path
// that chose not to read around them) loses the bet every time: each fault
// then pays a span's transfer (and the server its reads) for one page, and
// the second fault in a chunk even a whole chunk. Once the remembered reads
// show that neighbours do not come, lone faults fetch only their own pages,
// and the first read that comes near a remembered one goes back to spans.
type locality struct {
	recs [localityRing]demandRead
	n    int // records in recs
	next int // where the next record goes
}

type demandRead struct {
	lo, hi int64
	near   bool // a later demand read came within reach
}

// touch marks every remembered read that [a, b) comes within reach bytes
// of, and says whether there was one.
func (l *locality) touch(a, b, reach int64) bool {
	hit := false
	for i := range l.recs[:l.n] {
		r := &l.recs[i]
		if a < r.hi+reach && b > r.lo-reach {
			r.near = true
			hit = true
		}
	}
	return hit
}

// add remembers a demand read [a, b) that started a fetch, forgetting the
// oldest one.
func (l *locality) add(a, b int64) {
	l.recs[l.next] = demandRead{lo: a, hi: b}
	l.next = (l.next + 1) % len(l.recs)
	l.n = min(l.n+1, len(l.recs))
}

// scattered says that the remembered reads, a full ring of them, were
// mostly left alone: fewer than a quarter had a read come near them.
func (l *locality) scattered() bool {
	if l.n < len(l.recs) {
		return false
	}
	near := 0
	for _, r := range l.recs {
		if r.near {
			near++
		}
	}
	return 4*near < l.n
}
