// Package kvmtest is a minimal KVM virtual machine monitor for tests: one
// memory slot at guest physical 0, one vCPU in flat 32-bit protected mode,
// port output, and a guest program (SumCode) that checksums guest memory.
//
// It exists to put a real guest on memory whose pages a userfaultfd handler
// in another process fills, the way Firecracker restores a snapshot. The
// vCPU's accesses fault inside KVM_RUN, in the kernel, and wait there in
// handle_userfault: through get_user_pages where the CPU virtualises the
// guest (VMX, SVM), through the instruction emulator's copy_from_user where
// KVM emulates it (PVM, the KVM of machines without VMX or SVM). Those are
// the paths that matter to a VMM, and no user-space load takes them.
//
// Only what that needs is here: no interrupts, no paging, no devices.
package kvmtest
