package s3store

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Location is one S3 object's name: a bucket and a key.
type Location struct {
	Bucket string
	Key    string
}

// String is the object's s3:// URI.
func (l Location) String() string { return "s3://" + l.Bucket + "/" + l.Key }

// maxKeyLen is S3's limit on a key's length in bytes.
const maxKeyLen = 1024

// ParseURI parses s3://bucket/key. The key is everything after the first
// slash that follows the bucket, taken literally: S3 keys may hold '%', '?'
// and '#', so the URI is not URL-decoded, just as the AWS CLI reads it.
func ParseURI(uri string) (Location, error) {
	rest, ok := strings.CutPrefix(uri, "s3://")
	if !ok {
		return Location{}, fmt.Errorf("object %q: not an s3:// URI (want s3://bucket/key)", uri)
	}
	bucket, key, found := strings.Cut(rest, "/")
	if bucket == "" {
		return Location{}, fmt.Errorf("object %q: no bucket (want s3://bucket/key)", uri)
	}
	if err := checkBucket(bucket); err != nil {
		return Location{}, fmt.Errorf("object %q: %w", uri, err)
	}
	if !found || key == "" {
		return Location{}, fmt.Errorf("object %q: no key after the bucket (want s3://bucket/key)", uri)
	}
	if len(key) > maxKeyLen {
		return Location{}, fmt.Errorf("object %q: key is %d bytes long; S3 allows %d", uri, len(key), maxKeyLen)
	}
	if !utf8.ValidString(key) {
		return Location{}, fmt.Errorf("object %q: key is not valid UTF-8", uri)
	}
	return Location{Bucket: bucket, Key: key}, nil
}

// checkBucket applies S3's rules for bucket names (3 to 63 lower-case
// letters, digits, dots and hyphens, starting and ending with a letter or a
// digit, not an IPv4 address). Catching a bad name here gives the user a
// message about their URI instead of an endpoint's puzzling 400, and keeps a
// name that would change the request's host or path out of the URL.
func checkBucket(b string) error {
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("bucket %q: a bucket name has 3 to 63 characters", b)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return fmt.Errorf("bucket %q: character %q at %d is not allowed (lower-case letters, digits, '.' and '-' only)", b, c, i)
		}
	}
	if !isAlnum(b[0]) || !isAlnum(b[len(b)-1]) {
		return fmt.Errorf("bucket %q: a bucket name starts and ends with a letter or a digit", b)
	}
	if strings.Contains(b, "..") {
		return fmt.Errorf("bucket %q: two dots in a row are not allowed", b)
	}
	if a, err := netip.ParseAddr(b); err == nil && a.Is4() {
		return fmt.Errorf("bucket %q: a bucket name may not be an IP address", b)
	}
	return nil
}

func isAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
