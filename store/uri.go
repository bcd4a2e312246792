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
	case "s3":
		if u.Host == "" || strings.Trim(u.Path, "/") == "" {
			return URI{}, fmt.Errorf("object %q: want s3://BUCKET/KEY", s)
		}
		return URI{Scheme: u.Scheme, Raw: s}, nil
	default:
		return URI{}, fmt.Errorf("object %q: unknown scheme %q (want a path, file://, http://, https:// or s3://)", s, u.Scheme)
	}
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
