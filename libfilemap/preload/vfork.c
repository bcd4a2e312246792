/*
 * vfork(2) is fork(2) once the shim has a descriptor or a mapping.
 *
 * A vfork child runs in its parent's memory until it execs, and a
 * program's child calls close, dup2, close_range before it does (CPython's
 * subprocess does, through the PLT): the shim's would change the parent's
 * tables, giving the parent's descriptor 0 a child's object to read, or
 * closing the parent's objects and unmapping its mappings. fork gives the
 * child tables of its own, as it gives it descriptors of its own; what it
 * costs is copying the page tables of a large program. A program with no
 * object opened yet vforks as it asked.
 *
 * vfork cannot be wrapped by a function: the child would return from the
 * wrapper's frame, and the parent, resuming in it, find it overwritten.
 * So vfork is a stub that asks which function to be and jumps to it with
 * the caller's stack as it found it.
 */
#include <unistd.h>

#include "shim.h"

void *shim_vfork_target(void) SHIM_HIDDEN;

void *shim_vfork_target(void)
{
	if (shim_any() || shim_maps_any())
		return (void *)REAL(fork);
	return (void *)REAL(vfork);
}

#if defined(__x86_64__)
/* At entry the stack is 8 bytes off 16-byte alignment (the return
 * address): 8 more for the call, taken back before the jump. */
__asm__(".text\n"
	".globl vfork\n"
	".type vfork, @function\n"
	"vfork:\n"
	"	subq $8, %rsp\n"
	"	call shim_vfork_target\n"
	"	addq $8, %rsp\n"
	"	jmp *%rax\n"
	".size vfork, .-vfork\n");
#else
#error "libfilemap-preload is written for x86_64 (vfork's stub, stat.c's struct stat)"
#endif
