package store

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// URI is a parsed object name: a local path, file://, http(s):// or s3://.
type URI struct {
	Scheme string // "file", "http", "https" or "s3"
	Path   string // the local path for "file"; empty for remote objects
	Raw    string // what the user wrote: for remote objects, what their stores open
}

// ParseURI parses an object name. A bare path is a local file.
func ParseURI(s string) (URI, error) {
	if s == "" {
		return URI{}, fmt.Errorf("empty object name")
	}
	if !strings.Contains(s, "://") {
		abs, err := filepath.Abs(s)
		if err != nil {
			return URI{}, fmt.Errorf("object %q: %w", s, err)
		}
		return URI{Scheme: "file", Path: abs, Raw: s}, nil
	}
	if scheme, rest, _ := strings.Cut(s, "://"); strings.EqualFold(scheme, "s3") {
		return parseS3(s, rest)
	}
	u, err := url.Parse(s)
	if err != nil {
		return URI{}, fmt.Errorf("object %q: bad URI: %w", s, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return URI{}, fmt.Errorf("object %q: file URI names host %q; only local files are supported", s, u.Host)
		}
		if u.Path == "" {
			return URI{}, fmt.Errorf("object %q: file URI has no path", s)
		}
		return URI{Scheme: "file", Path: u.Path, Raw: s}, nil
	case "http", "https":
		if u.Host == "" {
			return URI{}, fmt.Errorf("object %q: %s URI has no host", s, u.Scheme)
		}
		return URI{Scheme: u.Scheme, Raw: s}, nil
	default:
		return URI{}, fmt.Errorf("object %q: unknown scheme %q (want a path, file://, http://, https:// or s3://)", s, u.Scheme)
	}
}

// parseS3 checks the shape of s3://BUCKET/KEY (rest is what follows the
// "://") without URL-decoding it: an S3 key is taken literally, as the AWS
// CLI takes it: "100%.bin", "a%20b" and "a+b?c#d" are the keys they spell.
// url.Parse would refuse the first ("invalid URL escape") and read '?' and
// '#' as a query and a fragment, leaving such objects out of reach: "%25"
// names another key. store/s3store checks the bucket and key.
func parseS3(s, rest string) (URI, error) {
	bucket, key, _ := strings.Cut(rest, "/")
	if bucket == "" || key == "" {
		return URI{}, fmt.Errorf("object %q: want s3://BUCKET/KEY", s)
	}
	return URI{Scheme: "s3", Raw: s}, nil
}

// OpenLocal opens a local file for reading with the caller's own
// credentials and checks that it is a regular file. Errors name the path.
func OpenLocal(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("open %s: is a directory", path)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("open %s: not a regular file (%v)", path, st.Mode().Type())
	}
	return f, nil
}
