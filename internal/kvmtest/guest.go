//go:build linux && amd64

package kvmtest

import (
	"encoding/binary"
	"slices"
)

// SumCode returns the guest program that checksums guest memory: 21 bytes
// of position-independent 32-bit code, which Run starts at its first byte
// with the registers of SumRegs. It reads the 32-bit words at ESI, ESI+ECX, ESI+2·ECX, … while
// below EDI, writes two checksums to port DX with `out dx, eax`, and halts:
//
//   - sum, the sum of the words read (mod 2^32), and then
//   - weighted, the sum of the running sums, which weighs each word by its
//     distance from the end, so that pages swapped or served at the wrong
//     place change it even when they leave the plain sum alone.
//
// The stride in ECX is there because a guest instruction is not always
// cheap: where KVM emulates the guest instead of running it on the CPU (the
// PVM flavour of KVM, on machines without VMX or SVM), each one costs about
// a microsecond, and reading every word of 32 MiB would take a minute.
// A stride of 4 reads every word.
//
// Checksum computes the same two numbers in Go. The bytes were assembled
// by hand; testdata/sum.S is the same program for GNU as, and a test
// checks that the two agree where an assembler is installed. Each call
// returns a fresh slice.
func SumCode() []byte {
	return slices.Concat([][]byte{
		{0x31, 0xc0}, // 00:       xor  eax, eax     ; sum = 0
		{0x31, 0xdb}, // 02:       xor  ebx, ebx     ; weighted = 0
		{0x39, 0xfe}, // 04: loop: cmp  esi, edi
		{0x73, 0x08}, // 06:       jae  done         ; unsigned esi >= edi: to 0x10
		{0x03, 0x06}, // 08:       add  eax, [esi]   ; sum += word
		{0x01, 0xc3}, // 0a:       add  ebx, eax     ; weighted += sum
		{0x01, 0xce}, // 0c:       add  esi, ecx     ; next word
		{0xeb, 0xf4}, // 0e:       jmp  loop         ; to 0x04
		{0xef},       // 10: done: out  dx, eax      ; report sum
		{0x89, 0xd8}, // 11:       mov  eax, ebx
		{0xef},       // 13:       out  dx, eax      ; report weighted
		{0xf4},       // 14:       hlt
	}...)
}

// SumRegs returns the registers that make SumCode checksum the words of
// guest physical memory [start, end) that are stride bytes apart, from
// start, and report to port. stride must be a positive multiple of 4, and
// so should end-start be: the guest reads a whole word wherever it starts
// below end, as Checksum cannot.
func SumRegs(start, end uint64, stride uint32, port uint16) Regs {
	return Regs{RSI: start, RDI: end, RCX: uint64(stride), RDX: uint64(port)}
}

// Checksum is what SumCode reports for memory b with the given stride: the
// little-endian 32-bit words at offsets 0, stride, 2·stride, … of b. A word
// that would cross the end of b is left out.
func Checksum(b []byte, stride int) (sum, weighted uint32) {
	for i := 0; i+4 <= len(b); i += stride {
		sum += binary.LittleEndian.Uint32(b[i:])
		weighted += sum
	}
	return sum, weighted
}
