package firecracker

import (
	"strings"
	"testing"
)

func TestParseRegions(t *testing.T) {
	const file = 1 << 30
	ok := []struct {
		name, json string
		want       []GuestRegion
	}{
		{"v1.12: page_size and page_size_kib, in bytes both",
			`[{"base_host_virt_addr":140245012086784,"size":805306368,"offset":0,"page_size":4096,"page_size_kib":4096},
			  {"base_host_virt_addr":140248233312256,"size":268435456,"offset":805306368,"page_size":4096,"page_size_kib":4096}]`,
			[]GuestRegion{{140245012086784, 805306368, 0, 4096}, {140248233312256, 268435456, 805306368, 4096}}},
		{"v1.7: page_size_kib alone, in bytes", `[{"base_host_virt_addr":2097152,"size":4194304,"offset":0,"page_size_kib":2097152}]`,
			[]GuestRegion{{2097152, 4194304, 0, HugePageSize}}},
		{"v1.1: no page size", `[{"base_host_virt_addr":4096,"size":8192,"offset":4096}]`,
			[]GuestRegion{{4096, 8192, 4096, PageSize}}},
		{"unknown fields are ignored", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"gpa_start":0,"is_guest_memfd":false}]`,
			[]GuestRegion{{4096, 4096, 0, PageSize}}},
		{"the whole file", `[{"base_host_virt_addr":4096,"size":1073741824,"offset":0}]`,
			[]GuestRegion{{4096, file, 0, PageSize}}},
	}
	for _, c := range ok {
		got, err := ParseRegions([]byte(c.json), file)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if len(got) != len(c.want) {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("%s: region %d is %+v, want %+v", c.name, i, got[i], c.want[i])
			}
		}
	}
	bad := []struct{ json, want string }{
		{``, "not a JSON array"},
		{`[]`, "no regions"},
		{`[1]`, "region 0: not a region object"},
		{`[{"size":4096,"offset":0}]`, "region 0: field base_host_virt_addr is missing"},
		{`[{"base_host_virt_addr":-1,"size":4096,"offset":0}]`, "region 0: field base_host_virt_addr: want uint64"},
		{`[{"base_host_virt_addr":4096,"size":0,"offset":0}]`, "region 0: size is 0"},
		{`[{"base_host_virt_addr":4097,"size":4096,"offset":0}]`, "base_host_virt_addr 0x1001 is not a multiple"},
		{`[{"base_host_virt_addr":4096,"size":4095,"offset":0}]`, "size 4095 is not a multiple"},
		{`[{"base_host_virt_addr":4096,"size":4096,"offset":1}]`, "offset 1 is not a multiple"},
		{`[{"base_host_virt_addr":2097152,"size":4096,"offset":0,"page_size":2097152}]`, "size 4096 is not a multiple of the page size 2097152"},
		{`[{"base_host_virt_addr":4096,"size":4096,"offset":1073741824}]`, "region 0: bytes [1073741824, 1073745920) of the memory file"},
		{`[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":65536}]`, "page_size 65536: want 4096, or 2097152"},
		{`[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":3}]`, "page_size_kib 3 is not a power of two"},
		{`[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"page_size_kib":4}]`, "disagree"},
		{`[{"base_host_virt_addr":4096,"size":4096,"offset":0,"is_guest_memfd":true}]`, "guest_memfd regions"},
		{`[{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0}]`, "is not an address"},
		{`[{"base_host_virt_addr":4096,"size":8192,"offset":0},{"base_host_virt_addr":8192,"size":4096,"offset":8192}]`,
			"regions 0 and 1 overlap in the VMM's address space"},
		{`[{"base_host_virt_addr":65536,"size":8192,"offset":4096},{"base_host_virt_addr":4096,"size":8192,"offset":0}]`,
			"regions 0 and 1 overlap in the memory file"},
		{`[{"base_host_virt_addr":4194304,"size":2097152,"offset":0,"page_size":2097152},{"base_host_virt_addr":4096,"size":4096,"offset":2097152}]`,
			"region 1: page_size 4096 differs from region 0's 2097152"},
	}
	for _, c := range bad {
		_, err := ParseRegions([]byte(c.json), file)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error saying %q", c.json, err, c.want)
		}
	}
}
