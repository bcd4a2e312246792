package main

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/filemap/filemap"
	"github.com/filemap/filemap/proto"
)

func stat(args []string) error {
	fs := newFlags("stat", "[flags]", "Prints the daemon's counters; with --objects, the objects it caches.")
	asJSON := fs.Bool("json", false, "print JSON for machines")
	socket := fs.String("socket", proto.DefaultSocket(), "daemon socket")
	objects := fs.Bool("objects", false, "list the objects whose caches the daemon holds, the most cached first, as\n"+
		"fincore does the kernel's page cache: yours, or every user's for root")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *objects {
		return statObjects(*socket, *asJSON)
	}
	st, err := filemap.Stat(context.Background(), filemap.WithSocket(*socket))
	if err != nil {
		return err
	}
	if *asJSON {
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		return e.Encode(st)
	}
	// Each label is its JSON key in words, and says more in parentheses.
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', tabwriter.AlignRight)
	rows := []statRow{
		{"major faults (needed store I/O)", st.MajorFaults},
		{"minor faults (served from the cache)", st.MinorFaults},
		{"SIGBUS (pages poisoned)", st.SIGBUS},
		{"store reads", st.StoreReads},
		{"store bytes", size(int64(st.StoreBytes))},
		{"store errors", st.StoreErrors},
		{"fills in flight", st.FillsInFlight},
		{"fill buffer bytes (read buffers)", size(st.FillBufferBytes)},
		{"fill buffer limit", size(st.FillBufferLimit)},
		{"fill buffer waits (fills that waited)", st.FillBufferWaits},
		{"disk read bytes (in flight)", size(st.DiskReadBytes)},
		{"disk readahead limit", diskBound(st.DiskReadaheadLimit)},
		{"disk readahead queue waits", st.DiskReadaheadQueueWaits},
		{"cache bytes", size(st.CacheBytes)},
		{"cache budget", size(st.CacheBudget)},
		{"evictions", st.Evictions},
		{"evicted bytes", size(int64(st.EvictedBytes))},
		{"refaults", st.Refaults},
		{"metadata bytes (page state)", size(st.MetadataBytes)},
		{"huge extents (2 MiB, collapsed)", st.HugeExtents},
		{"collapses pending", st.CollapsesPending},
		{"collapses failed", st.CollapsesFailed},
		{"objects", st.Objects},
		{"idle objects (no client has them open)", st.IdleObjects},
		{"clients (besides this stat)", st.Clients},
		{"regions", st.Regions},
		{"protocol errors (connections closed for bad input)", st.ProtocolErrors},
		{"remote requests", st.RemoteRequests},
		{"remote request bytes", size(int64(st.RemoteRequestBytes))},
		{"remote retries", st.RemoteRetries},
		{"remote hedges (second requests for a slow one)", st.RemoteHedges},
		{"object changed (fills failed: changed since opened)", st.ObjectChanged},
	}
	if d := st.DiskCache; d != nil {
		rows = append(rows, []statRow{
			{"disk cache", d.Dir},
			{"disk cache hits / in memory / misses", fmt.Sprintf("%d / %d / %d", d.Hits, d.MemHits, d.Misses)},
			{"disk cache bytes read", size(int64(d.BytesRead))},
			{"disk cache bytes written", size(int64(d.BytesWritten))},
			{"disk cache bytes / bound", size(d.Bytes) + " / " + size(d.MaxBytes)},
			{"disk cache objects", d.Objects},
			{"disk cache corrupt chunks (fetched again)", d.Corrupt},
			{"disk cache corrupt indexes", d.CorruptIndexes},
			{"disk cache write errors (not cached)", d.WriteErrors},
			{"disk cache chunks not written (budget in use)", d.Uncached},
			{"disk cache evictions", d.Evictions},
		}...)
	} else if st.DiskCacheOff != "" {
		rows = append(rows, statRow{"disk cache off (why)", st.DiskCacheOff})
	}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%v\t\n", r.name, r.v)
	}
	for _, kind := range []string{"major", "minor", "marker", "store"} {
		if l, ok := st.FaultLatency[kind]; ok && l.Count > 0 {
			what := "fault latency " + kind
			if kind == "store" {
				what += " (store reads)"
			}
			fmt.Fprintf(tw, "%s p50 / p99 / mean\t%.2f / %.2f / %.2f µs (count %d)\t\n", what, l.P50Us, l.P99Us, l.MeanUs, l.Count)
		}
	}
	return tw.Flush()
}

// statRow is a row of stat's table: a counter's name and value.
type statRow struct {
	name string
	v    any
}

// statObjects prints the daemon's objects: a table, or JSON.
func statObjects(socket string, asJSON bool) error {
	objs, err := filemap.CachedObjects(context.Background(), filemap.WithSocket(socket))
	if err != nil {
		return err
	}
	if asJSON {
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		return e.Encode(proto.Objects{Objects: objs})
	}
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CACHED\tSIZE\t%\tUSERS\tUID\tVERSION\tOBJECT")
	for _, o := range objs {
		pct := 100.0
		if o.Size > 0 {
			pct = 100 * float64(o.CacheBytes) / float64(o.Size)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1f\t%d\t%d\t%s\t%s\n", short(o.CacheBytes), short(o.Size), min(pct, 100), o.Users, o.Uid, o.Version, o.URI)
	}
	return tw.Flush()
}

// short shows a byte count for a person, in binary units.
func short(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v, u := float64(n), 0
	for v >= 1024 && u < len(units)-1 {
		v, u = v/1024, u+1
	}
	if u == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", v, units[u])
}

// size shows a byte count for a person: exact, and in binary units.
func size(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%d (%s)", n, short(n))
}

func dropCaches(args []string) error {
	fs := newFlags("drop-caches", "[flags]", "Empties the daemon's caches of this user's objects (every user's, as root), as\n"+
		"writing 3 to /proc/sys/vm/drop_caches does the kernel's: every such mapping's\n"+
		"next access to a page reads its store again.")
	socket := fs.String("socket", proto.DefaultSocket(), "daemon socket")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	d, err := filemap.DropCachesCounted(context.Background(), filemap.WithSocket(*socket))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "dropped %s from the caches of %s\n", plural(int(d.Bytes), "byte"), plural(d.Objects, "object"))
	return nil
}

// plural is n things, for a person.
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}

// diskBound is the bound on readahead reads in flight, for a person.
func diskBound(limit int64) string {
	if limit <= 0 {
		return "none"
	}
	return size(limit)
}
