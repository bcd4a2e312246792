package filemap

// A model checkpoint laid out as safetensors lays one out, and a loader
// that reads it as one does: the remote benchmark's model-loading case.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/filemap/filemap/internal/pattern"
)

// tensor is one entry of a safetensors header: its bytes are
// [Begin, End) of the data that follows the header.
type tensor struct {
	Name       string
	DType      string
	Shape      []int64
	Begin, End int64
}

// The checkpoint's model, at 1 GiB: a decoder of 16 layers with hidden size
// 1024, as small models of 1–3 B parameters are built but fewer layers
// (theirs are 2–6 GiB). Each layer has two norms and three attention
// biases (4 KiB each: float32 vectors), four attention matrices (2 MiB)
// and three MLP matrices (16 MiB); the embedding and the output head are
// the largest (62.5 MiB). 195 tensors, from 4 KiB to 62.5 MiB, most of
// them small and most of the bytes in few: as in a real checkpoint.
const (
	ckptLayers = 16
	ckptHidden = 1024
	ckptInter  = 8192  // the MLP's width at 1 GiB
	ckptVocab  = 32000 // the embedding's rows at 1 GiB
)

// checkpointLayout lays out the model's tensors in a checkpoint of about
// size bytes: at other sizes than 1 GiB the rows of the MLP matrices, the
// embedding and the head scale with it, and the rest stays as it is.
func checkpointLayout(size int64) []tensor {
	scale := func(rows int64) int64 { return max(rows*size/(1<<30)/64*64, 64) }
	inter, vocab := scale(ckptInter), scale(ckptVocab)
	var ts []tensor
	var off int64
	add := func(name, dtype string, shape ...int64) {
		n := int64(2)
		if dtype == "F32" {
			n = 4
		}
		for _, d := range shape {
			n *= d
		}
		ts = append(ts, tensor{Name: name, DType: dtype, Shape: shape, Begin: off, End: off + n})
		off += n
	}
	add("model.embed_tokens.weight", "BF16", vocab, ckptHidden)
	for l := range ckptLayers {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"input_layernorm.weight", "F32", ckptHidden)
		for _, m := range []string{"q", "k", "v"} {
			add(p+"self_attn."+m+"_proj.weight", "BF16", ckptHidden, ckptHidden)
			add(p+"self_attn."+m+"_proj.bias", "F32", ckptHidden)
		}
		add(p+"self_attn.o_proj.weight", "BF16", ckptHidden, ckptHidden)
		add(p+"post_attention_layernorm.weight", "F32", ckptHidden)
		add(p+"mlp.gate_proj.weight", "BF16", inter, ckptHidden)
		add(p+"mlp.up_proj.weight", "BF16", inter, ckptHidden)
		add(p+"mlp.down_proj.weight", "BF16", ckptHidden, inter)
	}
	add("model.norm.weight", "F32", ckptHidden)
	add("lm_head.weight", "BF16", vocab, ckptHidden)
	return ts
}

// checkpointHeader is the safetensors header of ts: the 8-byte
// little-endian length of the JSON that follows, then the JSON, its
// entries in ts's order, padded with spaces to a multiple of 8 bytes so
// that the data is aligned.
func checkpointHeader(ts []tensor) []byte {
	var j bytes.Buffer
	j.WriteString(`{"__metadata__":{"format":"pt"}`)
	for _, t := range ts {
		shape, _ := json.Marshal(t.Shape)
		fmt.Fprintf(&j, `,%q:{"dtype":%q,"shape":%s,"data_offsets":[%d,%d]}`, t.Name, t.DType, shape, t.Begin, t.End)
	}
	j.WriteString("}")
	for j.Len()%8 != 0 {
		j.WriteByte(' ')
	}
	h := binary.LittleEndian.AppendUint64(nil, uint64(j.Len()))
	return append(h, j.Bytes()...)
}

// writeCheckpoint makes path a checkpoint of about size bytes: the header,
// then the tensors' bytes, which are the test pattern at their offsets in
// the file, so that a loader's copies can be checked.
func writeCheckpoint(tb testing.TB, path string, size int64) (total int64) {
	tb.Helper()
	ts := checkpointLayout(size)
	hdr := checkpointHeader(ts)
	total = int64(len(hdr)) + ts[len(ts)-1].End
	pattern.WriteFile(tb, path, total)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(hdr, 0); err != nil {
		tb.Fatal(err)
	}
	return total
}

// parseCheckpointHeader reads the tensors of a safetensors header, in the
// order the header lists them, and the offset of the data in the file.
func parseCheckpointHeader(mem []byte) (ts []tensor, dataStart int64, err error) {
	if len(mem) < 8 {
		return nil, 0, fmt.Errorf("%d bytes: too short for a safetensors header", len(mem))
	}
	n := int64(binary.LittleEndian.Uint64(mem))
	if n > int64(len(mem))-8 {
		return nil, 0, fmt.Errorf("header of %d bytes in a file of %d", n, len(mem))
	}
	// A json.Decoder walks the object's keys in their order, as a
	// loader iterating over the header does; a map would lose it.
	d := json.NewDecoder(bytes.NewReader(mem[8 : 8+n]))
	if _, err := d.Token(); err != nil { // {
		return nil, 0, err
	}
	for d.More() {
		key, err := d.Token()
		if err != nil {
			return nil, 0, err
		}
		var e struct {
			DType   string  `json:"dtype"`
			Shape   []int64 `json:"shape"`
			Offsets []int64 `json:"data_offsets"`
		}
		if err := d.Decode(&e); err != nil {
			return nil, 0, fmt.Errorf("header entry %v: %w", key, err)
		}
		if key == "__metadata__" {
			continue
		}
		if len(e.Offsets) != 2 || e.Offsets[0] > e.Offsets[1] || 8+n+e.Offsets[1] > int64(len(mem)) {
			return nil, 0, fmt.Errorf("tensor %v: data_offsets %v outside the file", key, e.Offsets)
		}
		ts = append(ts, tensor{Name: key.(string), DType: e.DType, Shape: e.Shape, Begin: e.Offsets[0], End: e.Offsets[1]})
	}
	return ts, 8 + n, nil
}

// loadCheckpoint reads every tensor of the checkpoint m maps, in header
// order, with threads goroutines taking the next tensor as each is done,
// copying each into a buffer of its own, as a loader does. It checks each
// copy against the test pattern and returns the time it took from open
// (the caller's start) and the bytes of the tensors.
func loadCheckpoint(m *Mapping, start time.Time, threads int) (time.Duration, int64, error) {
	mem := m.Bytes()
	var ts []tensor
	var dataStart int64
	var perr error
	if err := m.Guard(func() { ts, dataStart, perr = parseCheckpointHeader(mem) }); err != nil {
		return 0, 0, err
	}
	if perr != nil {
		return 0, 0, fmt.Errorf("%s: %w", m.name, perr)
	}
	bufs := make([][]byte, len(ts))
	var next atomic.Int64
	errs := make([]error, threads)
	var wg sync.WaitGroup
	for t := range threads {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(ts) && errs[t] == nil; i = int(next.Add(1) - 1) {
				from, to := dataStart+ts[i].Begin, dataStart+ts[i].End
				bufs[i] = make([]byte, to-from)
				if errs[t] = m.Guard(func() { copy(bufs[i], mem[from:to]) }); errs[t] == nil {
					errs[t] = checkTensor(bufs[i], from, ts[i].Name)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	var total int64
	for _, b := range bufs {
		total += int64(len(b))
	}
	for _, err := range errs {
		if err != nil {
			return 0, 0, err
		}
	}
	return elapsed, total, nil
}

// checkTensor checks the first and last words of a tensor copied from
// offset from of the checkpoint against the pattern there.
func checkTensor(b []byte, from int64, name string) error {
	for _, at := range []int64{0, int64(len(b)) - 8} {
		if at < 0 {
			continue
		}
		if got, want := binary.LittleEndian.Uint64(b[at:]), pattern.Word(from+at); got != want {
			return fmt.Errorf("tensor %s: word at offset %d of the file is %#x, want %#x", name, from+at, got, want)
		}
	}
	return nil
}

// TestCheckpointLayout: the remote benchmark's checkpoint is what it says:
// at 1 GiB about 200 tensors of 4 KiB to 64 MiB, contiguous, most of them
// small; and its header reads back, in order, as a loader reads it.
func TestCheckpointLayout(t *testing.T) {
	ts := checkpointLayout(1 << 30)
	var small int
	for i, x := range ts {
		n := x.End - x.Begin
		if n < 4<<10 || n > 64<<20 {
			t.Errorf("tensor %s: %d bytes, want 4 KiB to 64 MiB", x.Name, n)
		}
		if i > 0 && x.Begin != ts[i-1].End {
			t.Errorf("tensor %s begins at %d, not where %s ends (%d)", x.Name, x.Begin, ts[i-1].Name, ts[i-1].End)
		}
		if n <= 64<<10 {
			small++
		}
	}
	if len(ts) < 190 || len(ts) > 210 || small < len(ts)/3 {
		t.Errorf("%d tensors, %d of them small: want about 200, a third or more small", len(ts), small)
	}
	if total := ts[len(ts)-1].End; total < 900<<20 || total > 1<<30 {
		t.Errorf("the tensors take %d bytes, want about 1 GiB", total)
	}
	hdr := checkpointHeader(ts)
	mem := append(hdr, make([]byte, ts[len(ts)-1].End)...)
	got, dataStart, err := parseCheckpointHeader(mem)
	if err != nil {
		t.Fatal(err)
	}
	if dataStart != int64(len(hdr)) || dataStart%8 != 0 || len(got) != len(ts) {
		t.Fatalf("parsed %d tensors with data at %d; want %d at %d, 8-byte aligned", len(got), dataStart, len(ts), len(hdr))
	}
	for i := range ts {
		if got[i].Name != ts[i].Name || got[i].Begin != ts[i].Begin || got[i].End != ts[i].End {
			t.Fatalf("tensor %d parsed as %+v, want %+v", i, got[i], ts[i])
		}
	}
}
