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
	Raw    string // what the user wrote: for remote objects, what their stores open; never shown, it may hold credentials
}

// Name is the object's name for people: in logs, errors, listings and
// metric labels. It is Raw with its credentials redacted (Redact).
func (u URI) Name() string { return Redact(u.Raw) }

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
		return URI{}, badURI(s, err)
	}
	name := Redact(s)
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return URI{}, fmt.Errorf("object %q: file URI names host %q; only local files are supported", name, u.Host)
		}
		if u.Path == "" {
			return URI{}, fmt.Errorf("object %q: file URI has no path", name)
		}
		return URI{Scheme: "file", Path: u.Path, Raw: s}, nil
	case "http", "https":
		if u.Host == "" {
			return URI{}, fmt.Errorf("object %q: %s URI has no host", name, u.Scheme)
		}
		return URI{Scheme: u.Scheme, Raw: s}, nil
	default:
		return URI{}, fmt.Errorf("object %q: unknown scheme %q (want a path, file://, http://, https:// or s3://)", name, u.Scheme)
	}
}

// badURI is the error for s, which does not parse as a URI. Where its
// userinfo ends is then unknown (a password may hold a '/', '?' or '#'),
// and the parser's reason may quote any part of it: if s has an '@', all
// before the last one is hidden, and so is the reason.
func badURI(s string, err error) error {
	scheme, rest, _ := strings.Cut(s, "://")
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return fmt.Errorf("object %q: bad URI: %w", s, err)
	}
	return fmt.Errorf("object %q: bad URI", scheme+"://***"+rest[at:])
}

// Redact returns the object name s as people may see it. In a URI, the
// password becomes "***", as net/http shows it; so does a user name that
// stands alone, often a token sent as basic auth; and so does the value of
// every query parameter that carries a credential (credentialParam), as
// presigned URLs do. The rest is kept as written: the name must still say
// which object it is. A local path is returned as is.
func Redact(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s
	}
	// Split as url.Parse does: the authority runs to the first '/', '?'
	// or '#', and its userinfo to its last '@'.
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		user, _, hasPassword := strings.Cut(authority[:at], ":")
		if hasPassword {
			authority = user + ":***" + authority[at:]
		} else {
			authority = "***" + authority[at:]
		}
	}
	if strings.EqualFold(scheme, "s3") {
		return scheme + "://" + authority + tail // a key is literal: its '?' and '#' are its own
	}
	path, fragment, hasFragment := strings.Cut(tail, "#")
	if path, query, hasQuery := strings.Cut(path, "?"); hasQuery {
		tail = path + "?" + redactQuery(query)
	} else {
		tail = path
	}
	if hasFragment {
		tail += "#" + fragment
	}
	return scheme + "://" + authority + tail
}

// redactQuery replaces the values of a raw query's credentials with "***",
// keeping its order and encoding.
func redactQuery(query string) string {
	params := strings.Split(query, "&")
	for i, p := range params {
		k, _, hasValue := strings.Cut(p, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			name = k
		}
		if hasValue && credentialParam(name) {
			params[i] = k + "=***"
		}
	}
	return strings.Join(params, "&")
}

// credentialParam says whether a query parameter authenticates the
// request rather than selects the object: the signatures and key ids of
// presigned S3 (V4 and V2) and GCS URLs, S3's session token, CloudFront's
// and Azure's signatures, and bearer tokens.
func credentialParam(name string) bool {
	switch strings.ToLower(name) {
	case "x-amz-signature", "x-amz-credential", "x-amz-security-token", "awsaccesskeyid",
		"x-goog-signature", "x-goog-credential", "googleaccessid",
		"signature", "sig", "token", "access_token", "password":
		return true
	}
	return false
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
		return URI{}, fmt.Errorf("object %q: want s3://BUCKET/KEY", Redact(s))
	}
	if strings.ContainsAny(bucket, "@:") {
		return URI{}, fmt.Errorf("object %q: an s3:// URI takes no user or password: S3 credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, a role)", Redact(s))
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
