// Package testutil is what the tests of several packages share: waiting,
// with a bound, for what another goroutine or process brings about.
package testutil

import (
	"testing"
	"time"
)

// Bound is how long a wait lasts before it fails the test. It is not a
// timing assertion: it turns a hang into a failure that says what was
// awaited, long enough for a loaded machine.
const Bound = time.Minute

// Eventually polls cond until it holds, and reports whether it did within
// Bound.
func Eventually(cond func() bool) bool {
	deadline := time.Now().Add(Bound)
	for d := 100 * time.Microsecond; !cond(); d = min(2*d, 10*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(d)
	}
	return true
}

// WaitFor polls cond until it holds; past Bound it fails the test, saying
// what it waited for.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !Eventually(cond) {
		t.Fatalf("waited %v for %s", Bound, what)
	}
}

// WaitForState is WaitFor for a condition whose failure is best told by
// what was seen instead: state describes it, at the time of the failure.
func WaitForState(t testing.TB, state func() string, cond func() bool) {
	t.Helper()
	if !Eventually(cond) {
		t.Fatalf("waited %v: %s", Bound, state())
	}
}
