# The guest program of SumCode (guest.go), for GNU as. The test
# TestSumCodeMatchesAssembler assembles it and compares the bytes:
#
#   as --32 -o sum.o sum.S && objcopy -O binary -j .text sum.o sum.bin
#
# In: esi = start, edi = end (guest physical; flat segments, no paging),
# ecx = stride in bytes, dx = port. Out: two `out dx, eax`: the sum of the
# 32-bit words read, then the sum of the running sums.
	.intel_syntax noprefix
	.code32
	.text
	xor	eax, eax
	xor	ebx, ebx
loop:
	cmp	esi, edi
	jae	done
	add	eax, [esi]
	add	ebx, eax
	add	esi, ecx
	jmp	loop
done:
	out	dx, eax
	mov	eax, ebx
	out	dx, eax
	hlt
