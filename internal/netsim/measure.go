package netsim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// What Measure reads: enough bytes for a stable rate at the profiles'
// speeds (64 MiB is 1.3 s at 50 MB/s; the link's 16 × 32 MiB is 1.8 s at
// 300 MB/s), and enough small GETs for a stable median.
const (
	LinkConns     = 16
	measureSize   = 64 << 20
	linkPart      = 32 << 20
	smallGets     = 25
	measureKey    = "measure/object.bin"
	measureBucket = "filemap-netsim-measure"
)

// Figures are what a simulated network measured.
type Figures struct {
	GET4K       time.Duration // median 4 KiB ranged GET through the sim, one at a time on an open connection
	GET4KDirect time.Duration // the same around the toxics: the store's own time
	Added       time.Duration // median of the differences of GETs through the sim and around it, made in turn
	ConnRate    float64       // bytes a second of one GET through the sim
	LinkRate    float64       // bytes a second of LinkConns GETs at once through the sim
}

func (f Figures) String() string {
	return fmt.Sprintf("4 KiB GET %v (%v of it added; the store alone %v), one connection %s, %d connections %s",
		f.GET4K.Round(10*time.Microsecond), f.Added.Round(10*time.Microsecond), f.GET4KDirect.Round(10*time.Microsecond),
		Rate(f.ConnRate), LinkConns, Rate(f.LinkRate))
}

// Check says how f strays from p by more than tolerance (0.25: ±25%): the
// added latency and one connection's rate, both ways; the link's rate
// above its cap (below it, the machine may be what bounds it).
func (f Figures) Check(p Profile, tolerance float64) error {
	var errs []error
	within := func(what string, got, want float64, show func(float64) string) {
		if got < want*(1-tolerance) || got > want*(1+tolerance) {
			errs = append(errs, fmt.Errorf("%s: %s: measured %s, asked %s ±%.0f%%", p.Name, what, show(got), show(want), tolerance*100))
		}
	}
	ms := func(s float64) string { return fmt.Sprintf("%.2f ms", s*1e3) }
	within("added latency", f.Added.Seconds(), p.Latency.Seconds(), ms)
	within("one connection", f.ConnRate, float64(p.ConnRate), Rate)
	if f.LinkRate > float64(p.LinkRate)*(1+tolerance) {
		errs = append(errs, fmt.Errorf("%s: %d connections: measured %s, above the link's cap %s +%.0f%%",
			p.Name, LinkConns, Rate(f.LinkRate), Rate(float64(p.LinkRate)), tolerance*100))
	}
	return errors.Join(errs...)
}

// Measure measures the sim's network as it is now, on an object of its own
// (put once, around the toxics).
func (s *Sim) Measure(ctx context.Context) (Figures, error) {
	var f Figures
	if err := s.putMeasureObject(ctx); err != nil {
		return f, err
	}
	sim := s.Client(LinkConns)
	var err error
	if f.GET4K, f.GET4KDirect, f.Added, err = smallGetLatency(ctx, sim, s.Store.Client); err != nil {
		return f, err
	}
	start := time.Now()
	if err := get(ctx, sim, "", measureSize); err != nil {
		return f, err
	}
	f.ConnRate = measureSize / time.Since(start).Seconds()
	if f.LinkRate, err = linkRate(ctx, sim); err != nil {
		return f, err
	}
	return f, nil
}

// putMeasureObject puts Measure's object unless it is there.
func (s *Sim) putMeasureObject(ctx context.Context) error {
	c, bucket, key := s.Store.Client, measureBucket, measureKey
	if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err == nil {
		return nil
	}
	_, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) {
		return fmt.Errorf("create bucket %s: %w", bucket, err)
	}
	data := make([]byte, measureSize)
	rand.NewChaCha8([32]byte{}).Read(data) // incompressible, should anything compress
	_, err = c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key),
		Body: bytes.NewReader(data), ContentLength: aws.Int64(measureSize)})
	if err != nil {
		return fmt.Errorf("put s3://%s/%s: %w", bucket, key, err)
	}
	return nil
}

// smallGetLatency times 4 KiB ranged GETs at spread offsets, one at a
// time, in turn through the sim and around it (after one each that opens
// the connection), and returns the median of each and of the differences
// of each pair: the store's own time varies with the machine's load, and a
// pair of GETs made together sees about the same load.
func smallGetLatency(ctx context.Context, sim, direct *s3.Client) (simMedian, directMedian, added time.Duration, err error) {
	var simLat, directLat, diffs []time.Duration
	for i := -1; i < smallGets; i++ {
		off := int64(max(i, 0)) * 7919 * 4096 % (measureSize - 4096)
		rng := fmt.Sprintf("bytes=%d-%d", off, off+4095)
		var pair [2]time.Duration
		for j, c := range []*s3.Client{sim, direct} {
			start := time.Now()
			if err := get(ctx, c, rng, 4096); err != nil {
				return 0, 0, 0, err
			}
			pair[j] = time.Since(start)
		}
		if i >= 0 {
			simLat, directLat, diffs = append(simLat, pair[0]), append(directLat, pair[1]), append(diffs, pair[0]-pair[1])
		}
	}
	return median(simLat), median(directLat), median(diffs), nil
}

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

// linkRate is the bytes a second of LinkConns ranged GETs of linkPart
// bytes at once, each on a connection of its own.
func linkRate(ctx context.Context, c *s3.Client) (float64, error) {
	var wg sync.WaitGroup
	errs := make([]error, LinkConns)
	start := time.Now()
	for i := range LinkConns {
		off := int64(i%(measureSize/linkPart)) * linkPart
		wg.Go(func() { errs[i] = get(ctx, c, fmt.Sprintf("bytes=%d-%d", off, off+linkPart-1), linkPart) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return LinkConns * linkPart / elapsed.Seconds(), nil
}

// get reads Measure's object, the range rng of it ("": all of it), and
// checks that it got want bytes.
func get(ctx context.Context, c *s3.Client, rng string, want int64) error {
	in := &s3.GetObjectInput{Bucket: aws.String(measureBucket), Key: aws.String(measureKey)}
	if rng != "" {
		in.Range = aws.String(rng)
	}
	out, err := c.GetObject(ctx, in)
	if err != nil {
		return fmt.Errorf("GET s3://%s/%s %s: %w", measureBucket, measureKey, rng, err)
	}
	defer out.Body.Close()
	n, err := io.Copy(io.Discard, out.Body)
	if err == nil && n != want {
		err = fmt.Errorf("%d bytes, want %d", n, want)
	}
	if err != nil {
		return fmt.Errorf("GET s3://%s/%s %s: %w", measureBucket, measureKey, rng, err)
	}
	return nil
}
