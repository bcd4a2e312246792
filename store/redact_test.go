package store

import (
	"strings"
	"testing"
)

// Redact hides credentials and nothing else: the name must still say which
// object it is.
func TestRedact(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"http://alice:s3cr3tpw@example.com/file", "http://alice:***@example.com/file"},
		{"https://alice:s3cr3tpw@example.com:8443/a/b?x=1#top", "https://alice:***@example.com:8443/a/b?x=1#top"},
		{"http://alice:@example.com/f", "http://alice:***@example.com/f"},
		{"https://ghp_s3cr3tpw@example.com/f", "https://***@example.com/f"},
		{"http://alice:pa@ss@example.com/f", "http://alice:***@example.com/f"}, // userinfo ends at the last '@'
		{"http://alice:s3cr3tpw@example.com", "http://alice:***@example.com"},
		{"http://alice:s3cr3tpw@example.com?x=1", "http://alice:***@example.com?x=1"},
		{"http://example.com/@scope/pkg", "http://example.com/@scope/pkg"}, // an '@' in the path is no userinfo
		{"http://example.com/a?b=c@d", "http://example.com/a?b=c@d"},
		{
			"https://bucket.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=s3cr3tpw",
			"https://bucket.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=***",
		},
		{"https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIA&Expires=1&Signature=s3cr3tpw", "https://b.s3.amazonaws.com/k?AWSAccessKeyId=***&Expires=1&Signature=***"},
		{"https://acct.blob.core.windows.net/c/b?sv=2022&sig=s3cr3tpw&sp=r", "https://acct.blob.core.windows.net/c/b?sv=2022&sig=***&sp=r"},
		{"https://example.com/f?TOKEN=s3cr3tpw&v=2", "https://example.com/f?TOKEN=***&v=2"},
		{"https://example.com/f?x-amz%2Dsignature=s3cr3tpw", "https://example.com/f?x-amz%2Dsignature=***"}, // escaped names too
		{"https://example.com/f?token", "https://example.com/f?token"},
		{"https://example.com/f#sig=x", "https://example.com/f#sig=x"}, // a fragment is no query
		{"s3://bucket/dir/key", "s3://bucket/dir/key"},
		{"s3://bucket/100%.bin", "s3://bucket/100%.bin"},
		{"s3://bucket/a?token=b#c", "s3://bucket/a?token=b#c"},               // a key is literal
		{"/data/alice:s3cr3tpw@model.bin", "/data/alice:s3cr3tpw@model.bin"}, // a path is a path
		{"file:///data/model.bin", "file:///data/model.bin"},
	} {
		if got := Redact(c.in); got != c.want {
			t.Errorf("Redact(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// A URI's Name is redacted, and so is a ParseURI error, even for a URI the
// parser refuses, whose password may hold any character.
func TestURINameHidesPassword(t *testing.T) {
	u, err := ParseURI("http://alice:s3cr3tpw@example.com/file")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := u.Name(), "http://alice:***@example.com/file"; got != want {
		t.Errorf("Name() = %q, want %q", got, want)
	}
	if u.Raw != "http://alice:s3cr3tpw@example.com/file" {
		t.Errorf("Raw = %q: the store must open what the user wrote", u.Raw)
	}
	for _, bad := range []string{
		"http://alice:s3cr3tpw@/file",             // no host
		"gopher://alice:s3cr3tpw@example.com/f",   // unknown scheme
		"file://alice:s3cr3tpw@example.com/f",     // names a host
		"http://alice:s3cr/tpw@example.com/file",  // '/' in the password: does not parse
		"http://alice:s3cr3tpw%zz@example.com/f",  // a bad escape, which the parser quotes
		"http://alice:s3cr3tpw@example.com:x/f",   // a bad port
		"s3://alice:s3cr3tpw@/key",                // no bucket
		"http://alice:s3cr#tpw@example.com/file?", // '#' in the password
	} {
		_, err := ParseURI(bad)
		if err == nil {
			t.Errorf("ParseURI(%q) succeeded", bad)
			continue
		}
		if strings.Contains(err.Error(), "s3cr") {
			t.Errorf("ParseURI(%q): %v: shows the password", bad, err)
		}
		if !strings.Contains(err.Error(), "example.com") && !strings.Contains(err.Error(), "***") {
			t.Errorf("ParseURI(%q): %v: does not name the object", bad, err)
		}
	}
}
