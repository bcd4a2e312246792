package pagecache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// THPSysfs is where the kernel exposes its transparent huge page settings.
const THPSysfs = "/sys/kernel/mm/transparent_hugepage"

// CheckTHP refuses a kernel that would back the cache's memfds with huge
// folios. With shmem_enabled=always, one 4 KiB pwrite allocates a 2 MiB folio
// whose other pages read as zeros with no MISSING fault: clients would see
// zeros instead of data. The error names the setting to change. dir is
// THPSysfs if empty (tests name another); a missing directory means a
// kernel without THP.
func CheckTHP(dir string) error {
	if dir == "" {
		dir = THPSysfs
	}
	top, err := thpSetting(filepath.Join(dir, "shmem_enabled"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if hugeOnWrite(top) {
		return thpError(filepath.Join(dir, "shmem_enabled"), top)
	}
	sizes, _ := filepath.Glob(filepath.Join(dir, "hugepages-*", "shmem_enabled"))
	for _, path := range sizes {
		s, err := thpSetting(path)
		if err != nil {
			return err
		}
		if hugeOnWrite(s) || s == "inherit" && hugeOnWrite(top) {
			return thpError(path, s)
		}
	}
	return nil
}

// hugeOnWrite reports whether a setting lets a write(2) into a memfd, which
// has no VMA to carry MADV_HUGEPAGE, allocate a large folio.
func hugeOnWrite(s string) bool {
	return s == "always" || s == "within_size" || s == "force"
}

func thpError(path, s string) error {
	return fmt.Errorf("%w: %s is %q, which makes one page written into a memfd a large folio of zeros; "+
		"set it to advise or never (as root: echo never > %s)", ErrTHP, path, s, path)
}

// thpSetting reads a sysfs choice such as "always [never] deny" and returns
// the bracketed one.
func thpSetting(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for _, w := range strings.Fields(string(b)) {
		if strings.HasPrefix(w, "[") && strings.HasSuffix(w, "]") {
			return strings.Trim(w, "[]"), nil
		}
	}
	return "", fmt.Errorf("%s: no selected value in %q", path, strings.TrimSpace(string(b)))
}
