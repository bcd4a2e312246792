package s3test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"
)

func TestStart(t *testing.T) {
	s := Start(t)
	if !strings.HasPrefix(s.Endpoint, "http://127.0.0.1:") {
		t.Errorf("Endpoint = %q, want http://127.0.0.1:PORT", s.Endpoint)
	}
	for _, versioned := range []bool{false, true} {
		bucket := s.NewBucket(t, versioned)
		data := []byte("some bytes")
		etag, version := s.Put(t, bucket, "a/b", data)
		if etag == "" || (version != "") != versioned {
			t.Errorf("versioned %v: Put gave ETag %q, VersionId %q", versioned, etag, version)
		}
		out, err := s.Client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: &bucket, Key: new("a/b")})
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(out.Body)
		out.Body.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("GetObject = %q, %v; want %q", got, err, data)
		}
		// The posix backend keeps a bucket as a directory of Dir.
		if _, err := os.Stat(filepath.Join(s.Dir, bucket, "a", "b")); err != nil {
			t.Errorf("the object is not in the backend directory: %v", err)
		}
	}
}

func TestClose(t *testing.T) {
	s, err := New()
	if errors.Is(err, ErrNoBinary) {
		skipOrFail(t, err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close() // idempotent
	if s.proc.Cmd.ProcessState == nil {
		t.Error("Close returned before the gateway was waited for")
	}
	if _, err := os.Stat(s.tmp); !os.IsNotExist(err) {
		t.Errorf("Close left %s behind: %v", s.tmp, err)
	}
}

func TestOnce(t *testing.T) {
	var o Once
	a := o.Server(t)
	if b := o.Server(t); a != b {
		t.Error("Once started a second gateway")
	}
	o.Close()
	if _, err := os.Stat(a.tmp); !os.IsNotExist(err) {
		t.Errorf("Once.Close left %s behind: %v", a.tmp, err)
	}
	tb := &recordingTB{TB: t}
	var closed Once
	closed.Close()
	closed.Server(tb)
	if !tb.failed {
		t.Error("Server after Close should fail the test")
	}
}

func TestBinaryFromEnv(t *testing.T) {
	t.Setenv(EnvBinary, "/nonexistent/versitygw")
	if _, err := Binary(); err == nil || !strings.Contains(err.Error(), "/nonexistent/versitygw") {
		t.Errorf("Binary with %s pointing nowhere = %v, want an error naming the path", EnvBinary, err)
	}
}

// TestSkipOrFail: a missing gateway skips a test on a developer's machine
// but fails it in CI, where a test that did not run must not pass.
func TestSkipOrFail(t *testing.T) {
	for _, c := range []struct {
		ci              string
		err             error
		skipped, failed bool
	}{
		{"", ErrNoBinary, true, false},
		{"true", ErrNoBinary, false, true},
		{"", fmt.Errorf("wrapped: %w", ErrNoBinary), true, false},
		{"", errors.New("exited before answering"), false, true},
	} {
		t.Setenv("CI", c.ci)
		tb := &recordingTB{TB: t}
		skipOrFail(tb, c.err)
		if tb.skipped != c.skipped || tb.failed != c.failed {
			t.Errorf("CI=%q, %v: skipped %v, failed %v; want %v, %v", c.ci, c.err, tb.skipped, tb.failed, c.skipped, c.failed)
		}
		if !strings.Contains(tb.msg, "versitygw") && errors.Is(c.err, ErrNoBinary) {
			t.Errorf("the message %q should say what is missing", tb.msg)
		}
	}
}

// recordingTB records a skip or a failure instead of ending the test.
type recordingTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Skipf(format string, args ...any) {
	r.skipped, r.msg = true, fmt.Sprintf(format, args...)
}
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.failed, r.msg = true, fmt.Sprintf(format, args...)
}
