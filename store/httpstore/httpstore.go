// Package httpstore reads http:// and https:// objects by byte ranges: it
// is filemap's network file system client, the part fs/nfs or fs/netfs
// plays under read_folio in the kernel. An Object is a remote.Object; wrap
// it in a remote.Store for chunking, retries and hedging.
//
// An Object pins the resource's size and version at Open and never returns
// bytes of another version. The version is the strong ETag, sent as
// If-Match with every range; without one, Last-Modified ("lm:" + the date),
// sent as If-Unmodified-Since and If-Range; without either, a weak ETag,
// checked against each response's. A server that sends no validator at all
// still works, but its Version is "" and a change that keeps the size
// cannot be detected: such a resource must not change while it is mapped.
//
// The bytes are the resource as the server stores it: requests ask for the
// identity encoding and a Content-Encoding is never undone, so sizes and
// ranges always refer to the same bytes.
package httpstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strings"

	"github.com/filemap/filemap/store"
	"github.com/filemap/filemap/store/remote"
)

// Options configure Open.
type Options struct {
	// Client makes the requests. Nil means a client of its own, with
	// NewTransport(Parallel), whose idle connections Close closes.
	Client *http.Client

	// Header is sent with every request, e.g. Authorization. Prefer it to
	// secrets in the URL's query: the query is part of the Key and of
	// errors, with only the values of the parameters store.Redact knows
	// for credentials (presigned URLs' signatures, tokens) hidden.
	Header http.Header

	// Parallel is how many requests the caller keeps in flight
	// (remote.Config.Parallel); it sizes the default transport's pool of
	// idle connections. Default remote.DefaultParallel.
	Parallel int
}

// Object is one version of an HTTP resource, read by byte ranges.
type Object struct {
	url    string // as given, userinfo included: the client sends it as basic auth
	name   string // the URL without userinfo or credentials (store.Redact), for Key and errors
	client *http.Client
	own    bool // the client is ours to clean up
	header http.Header

	size    int64
	version string
	etag    string // as the server sent it at Open, strong or weak
	lastMod string // Last-Modified at Open
}

var _ remote.Object = (*Object)(nil)

// Open pins the size and version of the resource at rawURL, from a HEAD or,
// when HEAD is refused or says too little, from a one-byte ranged GET. It
// fails if the server does not serve byte ranges.
func Open(ctx context.Context, rawURL string, opts Options) (*Object, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("httpstore: bad URL %q: %w", store.Redact(rawURL), withoutURL(err))
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("httpstore: %q is not an http:// or https:// URL", u.Redacted())
	}
	o := &Object{url: rawURL, name: store.Redact(withoutUserinfo(u)), client: opts.Client, header: opts.Header}
	if o.client == nil {
		parallel := opts.Parallel
		if parallel <= 0 {
			parallel = remote.DefaultParallel
		}
		o.client = &http.Client{Transport: NewTransport(parallel)}
		o.own = true
	}
	if err := o.stat(ctx); err != nil {
		o.Close()
		return nil, fmt.Errorf("httpstore: open %s: %w", o.name, err)
	}
	return o, nil
}

// withoutURL is the cause inside err's *url.Error, if it has one. That
// error names the URL, with the credentials of its query in full; the
// callers here name it themselves, redacted, and once.
func withoutURL(err error) error {
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func withoutUserinfo(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

func (o *Object) Size() int64 { return o.size }

// Key is the URL without its userinfo, and with the values of its query's
// credentials hidden: they let the request in, they do not select the
// resource, as userinfo does not. Its scheme already sets it apart from
// other stores' keys; the rest of the query, which may select the
// resource, is kept.
func (o *Object) Key() string { return o.name }

// Version is the strong ETag, "lm:" and the Last-Modified date, the weak
// ETag, or "" when the server sends no validator.
func (o *Object) Version() string { return o.version }

// Close closes the idle connections of a client Open made.
func (o *Object) Close() error {
	if o.own {
		o.client.CloseIdleConnections()
	}
	return nil
}

// stat pins size and version, from a HEAD if it tells us everything.
func (o *Object) stat(ctx context.Context) error {
	resp, err := o.do(ctx, http.MethodHead, nil)
	if err != nil {
		return fmt.Errorf("HEAD: %w", err)
	}
	drainClose(resp.Body)
	if resp.StatusCode == http.StatusOK && resp.ContentLength >= 0 && acceptsByteRanges(resp.Header) {
		o.pin(resp.Header, resp.ContentLength)
		return nil
	}
	// HEAD refused (405, 501; 403 from a URL presigned for GET only), or
	// silent about length or ranges: a GET of one byte has the last word.
	return o.probe(ctx)
}

func acceptsByteRanges(h http.Header) bool {
	for _, v := range h.Values("Accept-Ranges") {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "bytes") {
				return true
			}
		}
	}
	return false
}

// probe pins size and version from a GET of the first byte, which also
// shows whether the server honours ranges.
func (o *Object) probe(ctx context.Context) error {
	resp, err := o.do(ctx, http.MethodGet, http.Header{"Range": {"bytes=0-0"}})
	if err != nil {
		return fmt.Errorf("GET bytes=0-0: %w", err)
	}
	defer drainClose(resp.Body)
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || cr.first != 0 || cr.last != 0 || cr.size < 0 {
			return fmt.Errorf("GET bytes=0-0: answered %q: %w", resp.Header.Get("Content-Range"), errNoRanges)
		}
		o.pin(resp.Header, cr.size)
		return nil
	case http.StatusRequestedRangeNotSatisfiable: // "bytes */0": an empty resource
		if cr, err := parseContentRange(resp.Header.Get("Content-Range")); err == nil && cr.size == 0 {
			o.pin(resp.Header, 0)
			return nil
		}
	case http.StatusOK:
		if resp.ContentLength == 0 {
			o.pin(resp.Header, 0)
			return nil
		}
		return fmt.Errorf("GET bytes=0-0 answered 200 with the whole resource: %w", errNoRanges)
	}
	return fmt.Errorf("GET bytes=0-0: %w", statusError(resp))
}

var errNoRanges = errors.New("server does not support byte ranges")

// pin records the size and the version, and how to hold the server to it.
func (o *Object) pin(h http.Header, size int64) {
	o.size = size
	o.etag = h.Get("ETag")
	o.lastMod = h.Get("Last-Modified")
	switch {
	case o.strongETag():
		o.version = o.etag
	case o.lastMod != "":
		o.version = "lm:" + o.lastMod
	default:
		o.version = o.etag // weak, or none
	}
}

func (o *Object) strongETag() bool { return o.etag != "" && !strings.HasPrefix(o.etag, "W/") }

// byLastModified says whether Last-Modified is the version.
func (o *Object) byLastModified() bool { return !o.strongETag() && o.lastMod != "" }

// conditions are the headers that make the server refuse (412) a range of
// another version. If-Match takes only strong ETags; with Last-Modified,
// If-Unmodified-Since gets a 412 and If-Range, for servers that ignore it,
// a 200 that GetRange recognises. A weak ETag can only be compared with
// the response's.
func (o *Object) conditions(h http.Header) {
	switch {
	case o.strongETag():
		h.Set("If-Match", o.etag)
	case o.byLastModified():
		h.Set("If-Unmodified-Since", o.lastMod)
		h.Set("If-Range", o.lastMod)
	}
}

// condition describes the precondition sent, for errors.
func (o *Object) condition() string {
	h := http.Header{}
	o.conditions(h)
	if v := h.Get("If-Match"); v != "" {
		return "If-Match: " + v
	}
	return "If-Unmodified-Since: " + h.Get("If-Unmodified-Since")
}

// do sends a request with the Object's headers and extra.
func (o *Object) do(ctx context.Context, method string, extra http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, o.url, nil)
	if err != nil {
		return nil, withoutURL(err)
	}
	for k, vs := range o.header {
		req.Header[k] = vs
	}
	for k, vs := range extra {
		req.Header[k] = vs
	}
	// Ranges are of the bytes as stored: never let a transport ask for
	// gzip and decompress it.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := o.client.Do(req)
	// Every caller names the method and the URL already.
	return resp, withoutURL(err)
}

// GetRange fills p with the bytes at off of the pinned version.
func (o *Object) GetRange(ctx context.Context, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	if err := o.getRange(ctx, p, off); err != nil {
		return o.rangeError(p, off, err)
	}
	return nil
}

// rangeError names the URL, offset and length, keeping err's Permanent
// mark.
func (o *Object) rangeError(p []byte, off int64, err error) error {
	e := fmt.Errorf("GET %s: %d bytes at offset %d: %w", o.name, len(p), off, err)
	if store.IsPermanent(err) {
		return store.Permanent(e)
	}
	return e
}

func (o *Object) getRange(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > o.size {
		return store.Permanent(fmt.Errorf("range outside the %d-byte object", o.size))
	}
	h := http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, off+int64(len(p))-1)}}
	o.conditions(h)
	resp, err := o.do(ctx, http.MethodGet, h)
	if err != nil {
		return err // timeouts, resets, refused connections: retried
	}
	defer drainClose(resp.Body)
	if err := o.checkResponse(resp, off, len(p)); err != nil {
		return err
	}
	return readBody(resp.Body, p)
}

// checkResponse makes sure resp carries exactly bytes [off, off+n) of the
// pinned version, before a byte of its body is used.
func (o *Object) checkResponse(resp *http.Response, off int64, n int) error {
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusPreconditionFailed:
		return changed("server answered %s to %s", resp.Status, o.condition())
	case http.StatusRequestedRangeNotSatisfiable:
		return changed("server answered %s: the object is shorter than the %d bytes pinned at open", resp.Status, o.size)
	case http.StatusOK:
		if err := o.checkValidators(resp.Header); err != nil {
			return err
		}
		if o.byLastModified() { // we sent If-Range
			return changed("server answered If-Range %s with the whole object", o.lastMod)
		}
		return store.Permanent(fmt.Errorf("server ignored the Range header and answered 200 with the whole object"))
	default:
		return statusError(resp)
	}
	if err := o.checkValidators(resp.Header); err != nil {
		return err
	}
	return o.checkContentRange(resp, off, n)
}

// checkValidators catches servers that ignore conditional headers: the
// response's own validator must be the pinned one.
func (o *Object) checkValidators(h http.Header) error {
	etag, lm := h.Get("ETag"), h.Get("Last-Modified")
	switch {
	case o.etag != "" && etag != "" && strings.TrimPrefix(etag, "W/") != strings.TrimPrefix(o.etag, "W/"):
		return changed("the response's ETag is %s, not %s", etag, o.etag)
	case o.byLastModified() && lm != "" && lm != o.lastMod:
		return changed("the response's Last-Modified is %s, not %s", lm, o.lastMod)
	}
	return nil
}

func (o *Object) checkContentRange(resp *http.Response, off int64, n int) error {
	v := resp.Header.Get("Content-Range")
	if v == "" {
		return store.Permanent(errors.New("206 response without Content-Range"))
	}
	cr, err := parseContentRange(v)
	if err != nil {
		return store.Permanent(err)
	}
	if cr.size >= 0 && cr.size != o.size {
		return changed("Content-Range %q: the object now has %d bytes, not %d", v, cr.size, o.size)
	}
	if last := off + int64(n) - 1; cr.first != off || cr.last != last {
		return store.Permanent(fmt.Errorf("asked for bytes %d-%d, got Content-Range %q", off, last, v))
	}
	if resp.ContentLength >= 0 && resp.ContentLength != int64(n) {
		return store.Permanent(fmt.Errorf("Content-Length %d disagrees with Content-Range %q", resp.ContentLength, v))
	}
	return nil
}

func changed(format string, args ...any) error {
	return store.Permanent(fmt.Errorf("%w: "+format, append([]any{store.ErrChanged}, args...)...))
}

// readBody fills p from body. A body that ends early, or stalls until the
// request's context ends, is retried, from where it broke off (remote.Short);
// one that goes on past p is a broken server (the bytes it sent may be
// any), and p is never overrun either way.
func readBody(body io.Reader, p []byte) error {
	n, err := io.ReadFull(body, p)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return remote.Short(n, fmt.Errorf("body ended after %d of %d bytes: %w", n, len(p), err))
	}
	var extra [1]byte
	if m, _ := body.Read(extra[:]); m > 0 {
		return store.Permanent(fmt.Errorf("body longer than the %d bytes of the range", len(p)))
	}
	return nil
}

// drainClose reads a little of what is left of body, so that an HTTP/1.1
// connection can be reused, and closes it; a long rest is cheaper to cut
// by closing the connection.
func drainClose(body io.ReadCloser) {
	io.CopyN(io.Discard, body, 64<<10)
	body.Close()
}

func isPermanentStatus(code int) bool {
	switch {
	case code == http.StatusRequestTimeout, code == http.StatusTooEarly, code == http.StatusTooManyRequests:
		return false
	default:
		return code >= 400 && code < 500
	}
}

// statusError describes an unexpected status, with the start of the body
// (object stores explain themselves there). 404 and 410 wrap
// fs.ErrNotExist, 401 and 403 fs.ErrPermission; 4xx are Permanent except
// 408, 425 and 429, which are retried like 5xx.
func statusError(resp *http.Response) error {
	err := fmt.Errorf("server answered %s%s", resp.Status, bodySnippet(resp.Body))
	switch resp.StatusCode {
	case http.StatusNotFound, http.StatusGone:
		err = fmt.Errorf("%w (%w)", err, fs.ErrNotExist)
	case http.StatusUnauthorized, http.StatusForbidden:
		err = fmt.Errorf("%w (%w)", err, fs.ErrPermission)
	}
	if isPermanentStatus(resp.StatusCode) || resp.StatusCode < 400 {
		return store.Permanent(err)
	}
	return err
}

func bodySnippet(body io.Reader) string {
	var buf [200]byte
	n, _ := io.ReadFull(body, buf[:])
	s := strings.Join(strings.Fields(strings.ToValidUTF8(string(buf[:n]), "?")), " ")
	if s == "" {
		return ""
	}
	return ": " + s
}
