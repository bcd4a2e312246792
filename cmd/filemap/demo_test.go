package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
)

// demoChecked is the bytes the demo checks for a file of size bytes: the
// random pages in two rows, the whole file in four.
func demoChecked(size int64) int64 {
	npages := (size + pageSize - 1) / pageSize
	return 2*max(npages/8, 1)*pageSize + 4*size // size is a whole number of pages here
}

func TestDemo(t *testing.T) {
	dir := t.TempDir()
	r := filemapCLI(t, "demo", "--size", "16M", "--dir", dir)
	r.wantCode(t, 0)
	t.Logf("filemap demo --size 16M:\n%s%s", r.stdout, r.stderr)
	out := string(r.stdout)
	for _, c := range []string{caseRandom, caseSeq, caseWarm} {
		for _, m := range []string{mapKernel, mapFilemap} {
			row := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(c) + `\s+` + regexp.QuoteMeta(m) + `\s+\d+\s+\S+\s+\d+\s`)
			if !row.MatchString(out) {
				t.Errorf("no %q row for %q in the table", c, m)
			}
		}
	}
	for _, col := range []string{"case", "mapping", "time", "MB/s", "filemap/kernel", "major faults", "minor faults", "store reads"} {
		if !strings.Contains(out, col) {
			t.Errorf("the table has no %q column", col)
		}
	}
	if want := fmt.Sprintf("every byte checked: %d bytes\n", demoChecked(16<<20)); !strings.Contains(out, want) {
		t.Errorf("the demo did not print %q", want)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("the demo left %d files in --dir", len(left))
	}
}

func TestDemoJSON(t *testing.T) {
	r := filemapCLI(t, "demo", "--size", "16M", "--json")
	r.wantCode(t, 0)
	var rep demoReport
	dec := json.NewDecoder(bytes.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("filemap demo --json: %v; stdout:\n%s", err, r.stdout)
	}
	if rep.Size != 16<<20 || rep.Handler != "private" || len(rep.Files) != 2 {
		t.Errorf("report: size %d, handler %q, %d files; want %d, private, 2", rep.Size, rep.Handler, len(rep.Files), 16<<20)
	}
	if rep.Checked != demoChecked(rep.Size) {
		t.Errorf("checked %d bytes, want %d", rep.Checked, demoChecked(rep.Size))
	}
	if len(rep.Rows) != 6 {
		t.Fatalf("%d rows, want 6", len(rep.Rows))
	}
	// As root the private handler's cache is on a private tmpfs, and the
	// warm row waits for its extents to become huge folios.
	if os.Geteuid() == 0 && rep.HugeExtents == 0 {
		t.Errorf("no extent collapsed into a huge folio before the warm row, as root")
	}
	if extents := uint64(rep.Size / hugeSize); rep.HugeExtents > extents {
		t.Errorf("%d extents collapsed in the warm row's cache, of a file of %d", rep.HugeExtents, extents)
	}
	for i, row := range rep.Rows {
		wantCase := []string{caseRandom, caseSeq, caseWarm}[i/2]
		wantMap := []string{mapKernel, mapFilemap}[i%2]
		if row.Case != wantCase || row.Mapping != wantMap {
			t.Errorf("row %d is %q/%q, want %q/%q", i, row.Case, row.Mapping, wantCase, wantMap)
		}
		if row.Seconds <= 0 || row.MBps <= 0 || row.Pages <= 0 || row.Checked != row.Bytes {
			t.Errorf("row %d: %+v", i, row)
		}
		if row.Mapping == mapKernel {
			if row.Ratio != 0 || row.StoreReads != nil {
				t.Errorf("kernel row %d has a ratio or store reads: %+v", i, row)
			}
			continue
		}
		if row.StoreReads == nil || row.Ratio <= 0 {
			t.Fatalf("filemap row %d has no ratio or store reads: %+v", i, row)
		}
		if cold := row.Case != caseWarm; cold == (*row.StoreReads == 0) {
			t.Errorf("filemap row %q: %d store reads", row.Case, *row.StoreReads)
		}
	}
	for _, f := range rep.Files {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("the demo left %s behind", f)
		}
	}
}

func TestDemoKeep(t *testing.T) {
	dir := t.TempDir()
	r := filemapCLI(t, "demo", "--size", "40000", "--dir", dir, "--keep", "--advice", "normal")
	r.wantCode(t, 0)
	if !strings.Contains(string(r.stdout), fmt.Sprintf("every byte checked: %d bytes", 2*pageSize+4*40000)) {
		t.Errorf("unexpected output:\n%s", r.stdout)
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 2 {
		t.Errorf("demo --keep left %d files, want 2", len(left))
	}
	for _, e := range left {
		if fi, err := e.Info(); err != nil || fi.Size() != 40000 {
			t.Errorf("%s: %v, %v", e.Name(), fi, err)
		}
	}
}

func TestDemoFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--size", "0"}, "--size 0"},
		{[]string{"--size", "big"}, `invalid value "big" for flag -size`},
		{[]string{"--advice", "willneed"}, `--advice "willneed"`},
		{[]string{"extra"}, "unexpected arguments"},
	} {
		r := filemapCLI(t, append([]string{"demo"}, c.args...)...)
		r.wantCode(t, 1)
		r.wantStderr(t, c.want)
	}
	r := filemapCLI(t, "demo", "-h")
	r.wantCode(t, 0)
	r.wantStderr(t, "Usage: filemap demo", "-size", "-dir", "-keep", "-socket", "-json", "-advice")
}

// The generated content and its check: a misplaced, zeroed or foreign page
// is caught, and the error names the first offset that differs.
func TestCheckGenerated(t *testing.T) {
	const size = 5*pageSize + 13
	mem := make([]byte, size)
	fillGenerated(mem, 0, 1)
	for _, r := range [][2]int64{{0, size}, {3, size}, {5, 17}, {pageSize - 1, pageSize + 9}, {size - 3, size}} {
		if err := checkGenerated(mem, r[0], r[1], 1); err != nil {
			t.Fatalf("[%d, %d): %v", r[0], r[1], err)
		}
	}
	// Filled in pieces at odd offsets, the content is the same.
	pieces := make([]byte, size)
	for off := int64(0); off < size; off += 1001 {
		end := min(off+1001, size)
		fillGenerated(pieces[off:end], off, 1)
	}
	if !bytes.Equal(pieces, mem) {
		t.Fatal("content filled in pieces differs")
	}
	if err := checkGenerated(mem, 0, size, 2); err == nil {
		t.Error("the other file's seed passed the check")
	}

	for _, bad := range []int64{0, 7, 8, 4095, 4096, 12345, size - 1} {
		b := bytes.Clone(mem)
		b[bad] ^= 0x40
		err := checkGenerated(b, 0, size, 1)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("offset %d ", bad)) {
			t.Errorf("byte %d flipped: %v", bad, err)
		}
	}

	// A page shown at the wrong offset, and a page of zeros.
	b := bytes.Clone(mem)
	copy(b[2*pageSize:3*pageSize], mem[pageSize:2*pageSize])
	if err := checkGenerated(b, 0, size, 1); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("offset %d ", 2*pageSize)) {
		t.Errorf("misplaced page: %v", err)
	}
	clear(b[3*pageSize : 4*pageSize])
	if err := checkGenerated(b, 3*pageSize, size, 1); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("offset %d ", 3*pageSize)) {
		t.Errorf("zero page: %v", err)
	}
}
