package s3store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/remote"
)

// Object is one version of an S3 object, read by byte ranges. It is a
// remote.Object. Its methods are safe for concurrent use.
type Object struct {
	api       *s3.Client
	raw       aws.HTTPClient // nil: GetRange goes through the SDK (presign.go)
	pre       *presigner
	loc       Location
	where     string // the endpoint URL, or "aws"
	size      int64
	etag      string
	versionID string
	primed    []byte // the first bytes, from Open's GetObject, until Primed
}

var (
	_ remote.Object = (*Object)(nil)
	_ remote.Primer = (*Object)(nil)
)

// Open sends a HeadObject for uri (s3://bucket/key) and pins the size, ETag
// and VersionId it answers; with Options.Prime, a ranged GetObject of the
// object's first bytes instead. Errors name the URI and the endpoint, and say in
// words whether the bucket or key does not exist (wrapping fs.ErrNotExist),
// access was denied (fs.ErrPermission), or the endpoint could not be
// reached; the first two are marked store.Permanent. The HeadObject keeps
// the SDK's retryer (3 attempts unless AWS_MAX_ATTEMPTS or the shared config
// say otherwise), since nothing above Open retries it.
func (c *Client) Open(ctx context.Context, uri string) (*Object, error) {
	return c.OpenVersion(ctx, uri, "")
}

// OpenVersion is Open of one version of the object, as Object.Version
// names it: a VersionId opens that version, current or not, as long as the
// bucket keeps it; an ETag (quoted, as S3 writes it) opens the current
// version if it has that ETag, and is a store.ErrChanged error otherwise.
// "" is the current version, whatever it is.
func (c *Client) OpenVersion(ctx context.Context, uri, version string) (*Object, error) {
	loc, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	var versionID string
	if version != "" && !IsETag(version) {
		versionID = version
	}
	head, err := c.stat(ctx, loc, versionID)
	if err != nil {
		return nil, err
	}
	if versionID != "" && head.versionID != versionID {
		return nil, store.Permanent(fmt.Errorf("open %s at %s: asked for version %q, the answer is of version %q: the server ignored the VersionId",
			loc, c.where(), versionID, head.versionID))
	}
	if IsETag(version) && head.etag != version {
		return nil, store.Permanent(fmt.Errorf("open %s at %s: %w: asked for ETag %s, the object now has ETag %s",
			loc, c.where(), store.ErrChanged, version, head.etag))
	}
	o := &Object{
		api:       c.api,
		raw:       c.raw,
		loc:       loc,
		where:     c.where(),
		size:      head.size,
		etag:      head.etag,
		versionID: head.versionID,
		primed:    head.first,
	}
	if o.size < 0 {
		return nil, store.Permanent(fmt.Errorf("open %s at %s: %s gave no object size", loc, o.where, head.op))
	}
	if o.etag == "" && o.versionID == "" {
		// Without either there is nothing to pin, and a replaced object
		// would go unnoticed.
		return nil, store.Permanent(fmt.Errorf("open %s at %s: %s gave neither an ETag nor a VersionId to pin the version with", loc, o.where, head.op))
	}
	get := s3.GetObjectInput{Bucket: &o.loc.Bucket, Key: &o.loc.Key}
	if o.versionID != "" {
		get.VersionId = aws.String(o.versionID)
	}
	o.pre = &presigner{client: s3.NewPresignClient(c.api), in: get}
	return o, nil
}

// attrs are what Open learns of an object's version.
type attrs struct {
	op        string // the request that told: HeadObject or GetObject
	size      int64  // -1 if it did not say
	etag      string
	versionID string
	first     []byte // the object's first bytes, if the request brought them
}

// stat asks for the attributes of the object at loc (at versionID, if
// set): with a ranged GetObject of its first bytes when the client primes,
// else, and for an empty object, which has no first byte, with a
// HeadObject.
func (c *Client) stat(ctx context.Context, loc Location, versionID string) (attrs, error) {
	if c.prime > 0 {
		a, err := c.getFirst(ctx, loc, versionID)
		if codeOf(err) != "InvalidRange" {
			return a, err
		}
	}
	in := &s3.HeadObjectInput{Bucket: &loc.Bucket, Key: &loc.Key}
	if versionID != "" {
		in.VersionId = &versionID
	}
	head, err := c.api.HeadObject(ctx, in)
	if err != nil {
		return attrs{}, c.openError(ctx, loc, versionID, err)
	}
	a := attrs{op: "HeadObject", size: -1, etag: aws.ToString(head.ETag), versionID: aws.ToString(head.VersionId)}
	if head.ContentLength != nil {
		a.size = *head.ContentLength
	}
	return a, nil
}

// getFirst is stat by a GetObject of the first c.prime bytes. Its size is
// the total of the answer's Content-Range. A body that breaks off costs
// only the bytes: the headers pinned the version. An error with the code
// InvalidRange is returned as it is: the object is empty.
func (c *Client) getFirst(ctx context.Context, loc Location, versionID string) (attrs, error) {
	in := &s3.GetObjectInput{Bucket: &loc.Bucket, Key: &loc.Key, Range: aws.String(rangeSpec(0, int64(c.prime)))}
	if versionID != "" {
		in.VersionId = &versionID
	}
	out, err := c.api.GetObject(ctx, in)
	if codeOf(err) == "InvalidRange" {
		return attrs{}, err
	}
	if err != nil {
		return attrs{}, c.openError(ctx, loc, versionID, err)
	}
	defer out.Body.Close()
	a := attrs{op: "GetObject", size: -1, etag: aws.ToString(out.ETag), versionID: aws.ToString(out.VersionId)}
	first, last, total, err := parseContentRange(aws.ToString(out.ContentRange))
	switch {
	case out.ContentRange == nil && out.ContentLength != nil:
		a.size = *out.ContentLength // the whole object: the server ignored the Range
		last = min(int64(c.prime), a.size) - 1
	case err != nil || first != 0 || total < 0 || last != min(int64(c.prime), total)-1:
		return attrs{}, store.Permanent(fmt.Errorf("open %s at %s: GetObject of its first %d bytes answered Content-Range %q",
			loc, c.where(), c.prime, aws.ToString(out.ContentRange)))
	default:
		a.size = total
	}
	b := make([]byte, last+1)
	if _, err := io.ReadFull(out.Body, b); err == nil {
		a.first = b
	}
	return a, nil
}

// Primed returns the object's first bytes, which Open's GetObject brought,
// once (remote.Primer); none if Open sent a HeadObject.
func (o *Object) Primed() (int64, []byte) {
	b := o.primed
	o.primed = nil
	return 0, b
}

// IsETag tells an ETag, which S3 writes quoted, from a VersionId, which
// never holds a quote: OpenVersion takes either.
func IsETag(v string) bool { return strings.HasPrefix(v, `"`) || strings.HasPrefix(v, `W/"`) }

// nullVersion is the VersionId of the version a key was written with while
// its bucket's versioning was off or suspended: the next such write
// replaces it, bytes and ETag, under the same id.
const nullVersion = "null"

// Immutable says whether version names bytes that never change: a
// VersionId other than "null". An ETag, and the null version, name what the
// key holds now, which a write may replace.
func Immutable(version string) bool {
	return version != "" && version != nullVersion && !IsETag(version)
}

// Size is the object's length, as HeadObject gave it at Open.
func (o *Object) Size() int64 { return o.size }

// Key is "s3:" + endpoint-or-"aws" + "/" + bucket + "/" + key.
func (o *Object) Key() string { return "s3:" + o.where + "/" + o.loc.Bucket + "/" + o.loc.Key }

// Version is the VersionId where the bucket is versioned (it names bytes
// that never change), else the ETag. The VersionId "null" is no such name:
// S3 gives it to the version a key was written with while versioning was
// off or suspended, and the next such write replaces that version in
// place, so the ETag is what tells its bytes apart.
func (o *Object) Version() string {
	if Immutable(o.versionID) {
		return o.versionID
	}
	return o.etag
}

// Location is the object's bucket and key.
func (o *Object) Location() Location { return o.loc }

// ETag is the ETag pinned at Open, as the server wrote it (quotes included).
func (o *Object) ETag() string { return o.etag }

// VersionID is the VersionId pinned at Open, or "" where the bucket is not
// versioned.
func (o *Object) VersionID() string { return o.versionID }

// Close releases nothing: the connections belong to the Client, which other
// objects share.
func (o *Object) Close() error { return nil }

// noSDKRetries makes a GetObject a single attempt. store/remote retries
// GetRange with its own backoff, jitter, hedging and per-request timeouts;
// the SDK's retryer under it would multiply attempts (3 x remote's), hide
// stragglers from the hedger, and draw on a retry-token bucket that fails
// requests with "retry quota exceeded" when an endpoint has a bad minute.
// aws.NopRetryer, rather than retry.AddWithMaxAttempts(r, 1), is the plain
// statement of "one attempt": it has no backoff or token bucket to set up.
func noSDKRetries(o *s3.Options) { o.Retryer = aws.NopRetryer{} }

// GetRange reads exactly len(p) bytes at off of the pinned version with one
// ranged GetObject conditional on the ETag (If-Match) and naming the
// VersionId when there is one. A changed object is a permanent error that
// wraps store.ErrChanged; a short body is a retryable one that wraps
// io.ErrUnexpectedEOF.
func (o *Object) GetRange(ctx context.Context, p []byte, off int64) error {
	n := int64(len(p))
	if off < 0 || n > o.size-off {
		return store.Permanent(fmt.Errorf("read %s at offset %d, length %d: outside the object's %d bytes", o.loc, off, n, o.size))
	}
	if n == 0 {
		return nil
	}
	if o.raw != nil {
		return o.getPresigned(ctx, p, off)
	}
	out, err := o.api.GetObject(ctx, o.getInput(off, n), noSDKRetries)
	if err != nil {
		return o.readError(off, n, err)
	}
	defer out.Body.Close()
	a := answer{etag: out.ETag, versionID: out.VersionId, contentRange: out.ContentRange, length: aws.ToInt64(out.ContentLength)}
	if out.ContentLength == nil {
		a.length = -1
	}
	if err := o.checkResponse(a, off, n); err != nil {
		return err
	}
	return o.readBody(out.Body, p, off)
}

// readBody reads exactly len(p) bytes of a response body; a short one is a
// retryable error.
func (o *Object) readBody(body io.Reader, p []byte, off int64) error {
	n := int64(len(p))
	if got, err := io.ReadFull(body, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("read %s at offset %d, length %d: body ended after %d bytes: %w", o.loc, off, n, got, io.ErrUnexpectedEOF)
		}
		return fmt.Errorf("read %s at offset %d, length %d: body after %d bytes: %w", o.loc, off, n, got, err)
	}
	return nil
}

// answer is what a GetObject response says of the bytes it carries; nil
// for a header it lacks, -1 for an unknown length.
type answer struct {
	etag, versionID, contentRange *string
	length                        int64
}

func (o *Object) getInput(off, n int64) *s3.GetObjectInput {
	in := &s3.GetObjectInput{
		Bucket: &o.loc.Bucket,
		Key:    &o.loc.Key,
		Range:  aws.String(rangeSpec(off, n)),
	}
	if o.etag != "" {
		in.IfMatch = aws.String(o.etag)
	}
	if o.versionID != "" {
		in.VersionId = aws.String(o.versionID)
	}
	return in
}

// checkResponse makes sure that the response carries the pinned version and
// exactly the bytes asked for, for servers (and caches in front of them)
// that ignore If-Match, VersionId or Range.
func (o *Object) checkResponse(out answer, off, n int64) error {
	if out.etag != nil && o.etag != "" && !sameETag(*out.etag, o.etag) {
		return o.changed(off, n, fmt.Errorf("the response has ETag %s, not %s", *out.etag, o.etag))
	}
	if out.versionID != nil && o.versionID != "" && *out.versionID != o.versionID {
		return o.changed(off, n, fmt.Errorf("the response has VersionId %s, not %s", *out.versionID, o.versionID))
	}
	first, last, total, err := parseContentRange(aws.ToString(out.contentRange))
	switch {
	case out.contentRange == nil && off == 0 && n == o.size:
		// A whole-object answer (200) is the range asked for.
	case out.contentRange == nil:
		return store.Permanent(fmt.Errorf("read %s at offset %d, length %d: the server ignored the Range header", o.loc, off, n))
	case err != nil:
		return store.Permanent(fmt.Errorf("read %s at offset %d, length %d: %w", o.loc, off, n, err))
	case total >= 0 && total != o.size:
		return o.changed(off, n, fmt.Errorf("the object is now %d bytes long, not %d", total, o.size))
	case first != off || last != off+n-1:
		return store.Permanent(fmt.Errorf("read %s at offset %d, length %d: the server sent bytes %d-%d instead", o.loc, off, n, first, last))
	}
	if out.length >= 0 && out.length != n {
		return store.Permanent(fmt.Errorf("read %s at offset %d, length %d: Content-Length is %d", o.loc, off, n, out.length))
	}
	return nil
}

// rangeSpec is the Range header for n bytes at off.
func rangeSpec(off, n int64) string { return fmt.Sprintf("bytes=%d-%d", off, off+n-1) }

// changed is the error for a read that met another version of the object.
func (o *Object) changed(off, n int64, why error) error {
	return store.Permanent(fmt.Errorf("read %s at offset %d, length %d: %w (pinned version %s): %w",
		o.loc, off, n, store.ErrChanged, o.Version(), why))
}

// sameETag compares ETags as If-Match does (strongly), ignoring whether a
// server quotes them: some S3-compatible servers do not.
func sameETag(a, b string) bool {
	return strings.Trim(a, `"`) == strings.Trim(b, `"`)
}

// parseContentRange parses "bytes first-last/total"; total is -1 for "*".
func parseContentRange(s string) (first, last, total int64, err error) {
	bad := fmt.Errorf("malformed Content-Range %q", s)
	spec, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	span, size, ok := strings.Cut(spec, "/")
	if !ok {
		return 0, 0, 0, bad
	}
	a, b, ok := strings.Cut(span, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	if first, err = strconv.ParseInt(a, 10, 64); err != nil {
		return 0, 0, 0, bad
	}
	if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first {
		return 0, 0, 0, bad
	}
	if size == "*" {
		return first, last, -1, nil
	}
	if total, err = strconv.ParseInt(size, 10, 64); err != nil {
		return 0, 0, 0, bad
	}
	return first, last, total, nil
}
