//go:build !(linux && amd64)

package kvmtest

import (
	"runtime"
	"testing"
)

// TestKVM stands for this package's tests where they cannot build: the VMM
// speaks the x86 KVM ABI, and userfaultfd is Linux's.
func TestKVM(t *testing.T) {
	t.Skipf("needs /dev/kvm (KVM) on linux/amd64; this is %s/%s", runtime.GOOS, runtime.GOARCH)
}
