package s3store

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/aws/smithy-go"
)

func TestParseURI(t *testing.T) {
	for _, c := range []struct {
		uri, bucket, key string
	}{
		{"s3://bucket/key", "bucket", "key"},
		{"s3://my-bucket.v2/dir/sub/file.bin", "my-bucket.v2", "dir/sub/file.bin"},
		{"s3://abc/dir/", "abc", "dir/"},           // a "folder" object
		{"s3://abc//double", "abc", "/double"},     // keys may start with a slash
		{"s3://abc/a%20b?c#d", "abc", "a%20b?c#d"}, // taken literally, not URL-decoded
		{"s3://abc/dir/100%.bin", "abc", "dir/100%.bin"},
		{"s3://abc/dir/100%25.bin", "abc", "dir/100%25.bin"},
		{"s3://abc/a b+c", "abc", "a b+c"},
		{"s3://abc/données/ü.bin", "abc", "données/ü.bin"},
		{"s3://" + strings.Repeat("a", 63) + "/k", strings.Repeat("a", 63), "k"},
		{"s3://1.2.3/k", "1.2.3", "k"}, // dotted but not an IPv4 address
	} {
		loc, err := ParseURI(c.uri)
		if err != nil {
			t.Errorf("ParseURI(%q): %v", c.uri, err)
			continue
		}
		if loc.Bucket != c.bucket || loc.Key != c.key {
			t.Errorf("ParseURI(%q) = %q, %q; want %q, %q", c.uri, loc.Bucket, loc.Key, c.bucket, c.key)
		}
		if loc.String() != c.uri {
			t.Errorf("ParseURI(%q).String() = %q", c.uri, loc.String())
		}
	}
}

func TestParseURIErrors(t *testing.T) {
	for _, c := range []struct{ uri, want string }{
		{"s3://", "no bucket"},
		{"s3:///key", "no bucket"},
		{"s3://bucket", "no key"},
		{"s3://bucket/", "no key"},
		{"s3://Bad_Bucket!/k", "not allowed"},
		{"s3://UPPER/k", "not allowed"},
		{"s3://under_score/k", "not allowed"},
		{"s3://ab/k", "3 to 63"},
		{"s3://" + strings.Repeat("a", 64) + "/k", "3 to 63"},
		{"s3://-abc/k", "starts and ends"},
		{"s3://abc-/k", "starts and ends"},
		{"s3://a..b/k", "two dots"},
		{"s3://192.168.1.1/k", "IP address"},
		{"s3://bucket/" + strings.Repeat("k", 1025), "1025 bytes"},
		{"s3://bucket/\xff", "UTF-8"},
		{"http://bucket/key", "not an s3:// URI"},
		{"S3://bucket/key", "not an s3:// URI"},
		{"bucket/key", "not an s3:// URI"},
	} {
		_, err := ParseURI(c.uri)
		switch {
		case err == nil:
			t.Errorf("ParseURI(%q) succeeded", c.uri)
		case !strings.Contains(err.Error(), c.want):
			t.Errorf("ParseURI(%q) = %v, want it to say %q", c.uri, err, c.want)
		case !strings.Contains(err.Error(), fmt.Sprintf("%q", c.uri)):
			t.Errorf("ParseURI(%q) = %v, want it to name the URI", c.uri, err)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	for _, c := range []struct {
		s                  string
		first, last, total int64
	}{
		{"bytes 0-0/1", 0, 0, 1},
		{"bytes 10-19/100", 10, 19, 100},
		{"bytes 5-9/*", 5, 9, -1},
	} {
		first, last, total, err := parseContentRange(c.s)
		if err != nil || first != c.first || last != c.last || total != c.total {
			t.Errorf("parseContentRange(%q) = %d, %d, %d, %v; want %d, %d, %d", c.s, first, last, total, err, c.first, c.last, c.total)
		}
	}
	for _, s := range []string{"", "bytes", "bytes 1-2", "items 1-2/3", "bytes 2-1/3", "bytes a-2/3", "bytes 1-b/3", "bytes 1-2/x", "bytes */3"} {
		if _, _, _, err := parseContentRange(s); err == nil {
			t.Errorf("parseContentRange(%q) succeeded", s)
		}
	}
}

func TestSameETag(t *testing.T) {
	if !sameETag(`"abc"`, "abc") || !sameETag(`"abc"`, `"abc"`) || sameETag(`"abc"`, `"abd"`) {
		t.Error("sameETag should ignore quotes and nothing else")
	}
}

// statusError stands for an SDK response error with an HTTP status.
type statusError struct {
	status int
	code   string
}

func (e statusError) Error() string                 { return fmt.Sprintf("%d %s", e.status, e.code) }
func (e statusError) HTTPStatusCode() int           { return e.status }
func (e statusError) ErrorCode() string             { return e.code }
func (e statusError) ErrorMessage() string          { return e.code }
func (e statusError) ErrorFault() smithy.ErrorFault { return smithy.FaultUnknown }

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want failure
	}{
		{errors.New("connection reset by peer"), transient},
		{statusError{500, "InternalError"}, transient},
		{statusError{503, "SlowDown"}, transient},
		{statusError{502, ""}, transient},
		{statusError{429, ""}, transient},
		{statusError{408, ""}, transient},
		{statusError{400, "RequestTimeout"}, transient},
		{statusError{400, "ExpiredToken"}, transient},
		{statusError{403, "RequestTimeTooSkewed"}, transient},
		{statusError{412, "PreconditionFailed"}, precondition},
		{statusError{416, "InvalidRange"}, rangeGone},
		{statusError{404, "NoSuchKey"}, missing},
		{statusError{404, "NoSuchBucket"}, missing},
		{statusError{404, "NotFound"}, missing},
		{statusError{403, "AccessDenied"}, denied},
		{statusError{403, "Forbidden"}, denied},
		{statusError{400, "InvalidAccessKeyId"}, denied},
		{statusError{404, "XAdminUserNotFound"}, denied},
		{statusError{301, "PermanentRedirect"}, redirected},
		{statusError{400, "InvalidArgument"}, rejected},
		{statusError{501, "NotImplemented"}, rejected},
		{fmt.Errorf("wrapped: %w", statusError{404, "NoSuchKey"}), missing},
	} {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}
