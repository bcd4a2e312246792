package httpstore

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// A presigned URL's signature and a URL's password are credentials: they
// appear in no Key and no error, whether the server refuses a range, has
// no such resource, or cannot be reached; the URL is still named.
func TestCredentialsNotInKeyOrErrors(t *testing.T) {
	const secret = "s3cr3t"
	data := reference(testSize)
	const bad = 200 << 10 // ranges covering this byte get a 500
	s := newServer(t, data, false, func(s *testServer) {
		s.fault = func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
			var first, last int64
			if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err == nil && first <= bad && bad <= last {
				http.Error(w, "injected failure", http.StatusInternalServerError)
				return true
			}
			return false
		}
	})
	query := "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA" + secret + "&X-Amz-Signature=" + secret
	withPassword := strings.Replace(s.URL, "http://", "http://alice:"+secret+"@", 1)
	u := withPassword + "/obj" + query
	o, err := Open(context.Background(), u, Options{Client: testClient(t, s, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	shows := func(what, text, want string) {
		t.Helper()
		if strings.Contains(text, secret) {
			t.Errorf("%s shows a credential: %s", what, text)
		}
		if !strings.Contains(text, want) {
			t.Errorf("%s does not name the object (%s): %s", what, want, text)
		}
	}
	shows("Key", o.Key(), s.URL+"/obj?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Signature=***")
	getAndCheck(t, o, data, 0, 4096)

	err = o.GetRange(context.Background(), make([]byte, 4096), bad)
	if err == nil {
		t.Fatal("a range the server fails with 500 succeeded")
	}
	shows("the error of a failed range", err.Error(), s.URL+"/obj?")

	_, err = Open(context.Background(), withPassword+"/missing"+query, Options{Client: testClient(t, s, 2)})
	if err == nil {
		t.Fatal("open of a missing resource succeeded")
	}
	shows("the error of an open that got 404", err.Error(), s.URL+"/missing?")

	s.Close() // now every request fails in net/http, whose errors name the URL
	err = o.GetRange(context.Background(), make([]byte, 4096), 8192)
	if err == nil {
		t.Fatal("a range from a closed server succeeded")
	}
	shows("the error of a range from a closed server", err.Error(), s.URL+"/obj?")
}
