package s3store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/filemap/filemap/store"
)

// failure is what an SDK error means for the object.
type failure int

const (
	transient    failure = iota // a retry may cure it
	missing                     // 404: no such bucket, key or version
	denied                      // 403: credentials or policy
	precondition                // 412: If-Match failed, the ETag changed
	rangeGone                   // 416: the object is shorter than the range
	redirected                  // 3xx: another region or endpoint
	rejected                    // any other 4xx: the request itself is wrong
)

// isTransientCode reports S3 error codes that a later attempt may not meet
// even though their HTTP status is a 4xx: throttling, a slow client, a clock
// that the SDK corrects from the response, credentials that it refreshes.
func isTransientCode(code string) bool {
	switch code {
	case "RequestTimeout", "RequestTimeTooSkewed", "ExpiredToken", "TokenRefreshRequired",
		"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
		"RequestLimitExceeded", "BandwidthLimitExceeded":
		return true
	}
	return false
}

// statusOf is the HTTP status of the response that err came from, or 0 when
// there was none (the request never got an answer).
func statusOf(err error) int {
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// codeOf is the S3 error code in err ("NoSuchKey", "AccessDenied"...). A
// HEAD response has no body, so the SDK makes the code of the status text
// ("NotFound", "Forbidden").
func codeOf(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// isDeniedCode reports S3 error codes that mean the credentials or the
// policy refuse the request, whatever the status: versitygw answers an
// unknown access key id with 404 XAdminUserNotFound where AWS says 403
// InvalidAccessKeyId.
func isDeniedCode(code string) bool {
	switch code {
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "XAdminUserNotFound",
		"InvalidToken", "AllAccessDisabled", "AccountProblem":
		return true
	}
	return false
}

func classify(err error) failure {
	status, code := statusOf(err), codeOf(err)
	switch {
	case errors.As(err, new(credentialsError)):
		// The status in err is the credential source's, not S3's; and
		// the next refresh of the credentials may succeed.
		return transient
	case isTransientCode(code):
		return transient
	case isDeniedCode(code):
		return denied
	case status == http.StatusPreconditionFailed || code == "PreconditionFailed":
		return precondition
	case status == http.StatusRequestedRangeNotSatisfiable || code == "InvalidRange":
		return rangeGone
	case status == http.StatusNotFound:
		return missing
	case status == http.StatusForbidden:
		return denied
	case status >= 300 && status < 400:
		return redirected
	case status == http.StatusRequestTimeout || status == http.StatusTooManyRequests:
		return transient
	case status >= 400 && status < 500, status == http.StatusNotImplemented:
		return rejected
	default:
		// No response (a connection refused or reset, a timeout) or a
		// 5xx: the endpoint may do better on the next attempt.
		return transient
	}
}

// readError wraps a GetObject error with the object, offset and length, and
// marks it Permanent unless a retry may cure it. Once Open has seen the
// object, a 404, 412 or 416 all mean the pinned version is no longer there
// to read: the object changed.
func (o *Object) readError(off, n int64, err error) error {
	switch classify(err) {
	case precondition:
		return o.changed(off, n, err)
	case missing:
		return o.changed(off, n, fmt.Errorf("the object is gone: %w", err))
	case rangeGone:
		return o.changed(off, n, fmt.Errorf("the object is now shorter: %w", err))
	case denied:
		return store.Permanent(fmt.Errorf("read %s at offset %d, length %d: %w: %w", o.loc, off, n, fs.ErrPermission, err))
	case redirected, rejected:
		return store.Permanent(fmt.Errorf("read %s at offset %d, length %d: %w", o.loc, off, n, err))
	default:
		return fmt.Errorf("read %s at offset %d, length %d: %w", o.loc, off, n, err)
	}
}

// openError turns a failed HeadObject into an error that says what is
// wrong in words. A HEAD response carries no error code, so for a 4xx the
// same request is made as a one-byte GET, whose body names the cause:
// NoSuchBucket or NoSuchKey, InvalidAccessKeyId or SignatureDoesNotMatch.
// versionID is the version asked for, if any.
func (c *Client) openError(ctx context.Context, loc Location, versionID string, head error) error {
	prefix := fmt.Sprintf("open %s at %s", loc, c.where())
	var send *smithyhttp.RequestSendError
	if err := noCredentials(prefix, head); err != nil {
		return store.Permanent(err)
	}
	if errors.As(head, &send) && ctx.Err() == nil {
		return fmt.Errorf("%s: endpoint %s unreachable: %w", prefix, c.endpointName(), head)
	}
	err := head
	if status := statusOf(head); status >= 400 && status < 500 {
		if get := c.explain(ctx, loc, versionID); codeOf(get) != "" {
			err = get
		}
	}
	code := codeOf(err)
	switch kind := classify(err); {
	case versionID != "" && (code == "NoSuchVersion" || kind == rejected):
		// A rejected request names a version id the server cannot parse.
		return store.Permanent(fmt.Errorf("%s: no version %q of key %q in bucket %q: %w: %w", prefix, versionID, loc.Key, loc.Bucket, fs.ErrNotExist, err))
	case kind == missing && code == "NoSuchBucket":
		return store.Permanent(fmt.Errorf("%s: no such bucket %q: %w: %w", prefix, loc.Bucket, fs.ErrNotExist, err))
	case kind == missing:
		return store.Permanent(fmt.Errorf("%s: no such key %q in bucket %q: %w: %w", prefix, loc.Key, loc.Bucket, fs.ErrNotExist, err))
	case kind == denied:
		return store.Permanent(fmt.Errorf("%s: access denied (%s): %w: %w", prefix, deniedHint(code), fs.ErrPermission, err))
	case kind == redirected:
		return store.Permanent(fmt.Errorf("%s: redirected: is the bucket in another region than %q? %w", prefix, c.region, err))
	case kind == transient:
		return fmt.Errorf("%s: %w", prefix, err)
	default:
		return store.Permanent(fmt.Errorf("%s: %w", prefix, err))
	}
}

// explain makes the one-byte GET that tells why a HEAD failed, and returns
// its error; nil if it succeeded after all.
func (c *Client) explain(ctx context.Context, loc Location, versionID string) error {
	in := &s3.GetObjectInput{Bucket: &loc.Bucket, Key: &loc.Key, Range: aws.String("bytes=0-0")}
	if versionID != "" {
		in.VersionId = &versionID
	}
	out, err := c.api.GetObject(ctx, in, noSDKRetries)
	if err != nil {
		return err
	}
	out.Body.Close()
	return nil
}

func deniedHint(code string) string {
	switch code {
	case "InvalidAccessKeyId", "XAdminUserNotFound":
		return "the endpoint knows no such access key id"
	case "SignatureDoesNotMatch":
		return "the secret access key does not match the access key id"
	case "AccessDenied", "Forbidden":
		return "check the credentials and the bucket's policy"
	default:
		return code
	}
}

func (c *Client) endpointName() string {
	if c.endpoint != "" {
		return c.endpoint
	}
	return "for AWS region " + c.region
}
