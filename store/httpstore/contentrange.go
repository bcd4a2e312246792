package httpstore

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// contentRange is a parsed Content-Range header (RFC 9110 §14.4).
type contentRange struct {
	first, last int64 // the inclusive byte range sent; -1, -1 in a 416's "bytes */size"
	size        int64 // the complete length; -1 for "*" (unknown)
}

// parseContentRange parses a byte Content-Range, strictly: a server whose
// header we misread would make us cache the wrong bytes, so anything but
// the RFC's grammar is an error.
//
//	Content-Range     = range-unit SP ( range-resp / unsatisfied-range )
//	range-resp        = first-pos "-" last-pos "/" ( complete-length / "*" )
//	unsatisfied-range = "*/" complete-length
func parseContentRange(v string) (contentRange, error) {
	bad := func(why string) (contentRange, error) {
		return contentRange{}, fmt.Errorf("bad Content-Range %q: %s", v, why)
	}
	unit, rest, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return bad(`want "bytes first-last/size"`)
	}
	resp, length, ok := strings.Cut(rest, "/")
	if !ok {
		return bad("no /")
	}
	cr := contentRange{first: -1, last: -1, size: -1}
	var err error
	if length != "*" {
		if cr.size, err = parseDigits(length); err != nil {
			return bad("complete length: " + err.Error())
		}
	}
	if resp == "*" {
		if cr.size < 0 {
			return bad("neither a range nor a length")
		}
		return cr, nil
	}
	first, last, ok := strings.Cut(resp, "-")
	if !ok {
		return bad("no - in the range")
	}
	if cr.first, err = parseDigits(first); err != nil {
		return bad("first byte: " + err.Error())
	}
	if cr.last, err = parseDigits(last); err != nil {
		return bad("last byte: " + err.Error())
	}
	switch {
	case cr.last < cr.first:
		return bad("last byte before the first")
	case cr.size >= 0 && cr.last >= cr.size:
		return bad("range past the complete length")
	}
	return cr, nil
}

var errDigits = errors.New("not a decimal number below 2^63")

// parseDigits parses 1*DIGIT into a non-negative int64: no sign, no
// spaces, no overflow (strconv.ParseInt would take a sign).
func parseDigits(s string) (int64, error) {
	if s == "" {
		return 0, errDigits
	}
	var n int64
	for _, c := range []byte(s) {
		if c < '0' || c > '9' || n > (math.MaxInt64-int64(c-'0'))/10 {
			return 0, errDigits
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}

// String formats cr as a Content-Range value.
func (cr contentRange) String() string {
	size := "*"
	if cr.size >= 0 {
		size = fmt.Sprint(cr.size)
	}
	if cr.first < 0 {
		return "bytes */" + size
	}
	return fmt.Sprintf("bytes %d-%d/%s", cr.first, cr.last, size)
}
