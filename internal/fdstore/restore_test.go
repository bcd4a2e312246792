package fdstore

import (
	"errors"
	"slices"
	"sync/atomic"
	"testing"
)

// Restore moves the ID counter past every kept entry's, restores the
// entries in order and reports the ones it could not.
func TestRestore(t *testing.T) {
	var next atomic.Uint64
	next.Store(5)
	entries := []Entry{{ID: 3}, {ID: 9}, {ID: 7}}
	var failed []uint64
	got := Restore(entries, &next, func(e Entry) (uint64, error) {
		if e.ID == 9 {
			return 0, errors.New("gone")
		}
		return e.ID * 10, nil
	}, func(e Entry, err error) { failed = append(failed, e.ID) })
	if !slices.Equal(got, []uint64{30, 70}) || !slices.Equal(failed, []uint64{9}) {
		t.Errorf("restored %v, failed %v; want [30 70] and [9]", got, failed)
	}
	if n := next.Load(); n != 10 {
		t.Errorf("next ID %d, want 10: past every kept entry's", n)
	}
}
