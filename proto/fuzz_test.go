package proto_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/filemap/filemap/proto"
)

// frameBytes is a frame as it travels, without descriptors.
func frameBytes(typ proto.Type, id uint32, payload []byte) []byte {
	return append(header(typ, 0, id, len(payload)), payload...)
}

// fuzzSeeds are valid frames of every type with realistic payloads, and
// broken ones.
func fuzzSeeds() [][]byte {
	valid := [][]byte{
		frameBytes(proto.THello, 1, proto.Marshal(proto.Hello{PID: 4242, Program: "vmm"})),
		frameBytes(proto.TOpen, 2, proto.Marshal(proto.Open{URI: "/var/lib/images/disk.img", Version: "1048576@1700000000000000000"})),
		frameBytes(proto.TAttach, 3, proto.Marshal(proto.Attach{Handle: 7, Addr: 0x7f0000000000, Len: 1 << 20, Offset: 4096, Features: 0x1ff, Advice: "sequential"})),
		frameBytes(proto.TAdvise, 4, proto.Marshal(proto.Advise{Region: 8, Advice: "willneed", Offset: 0, Length: 65536})),
		frameBytes(proto.TDetach, 5, proto.Marshal(proto.Detach{Region: 8})),
		frameBytes(proto.TClose, 6, proto.Marshal(proto.Close{Handle: 7})),
		frameBytes(proto.TStat, 7, proto.Marshal(proto.Empty{})),
		frameBytes(proto.TReply, 1, proto.Marshal(proto.HelloReply{Daemon: "filemap", PageSize: 4096})),
		frameBytes(proto.TReply, 2, proto.Marshal(proto.OpenReply{Handle: 7, Size: 1048576, Version: "1048576@1700000000000000000"})),
		frameBytes(proto.TReply, 3, proto.Marshal(proto.AttachReply{Region: 8})),
		frameBytes(proto.TReply, 7, proto.Marshal(proto.Stats{MajorFaults: 3, MinorFaults: 9, CacheBytes: 1 << 20, Objects: 1, Clients: 2, Regions: 1})),
		frameBytes(proto.TError, 2, proto.Marshal(proto.Error{Op: "open", Message: "open /x: is a directory"})),
	}
	seeds := append([][]byte{}, valid...)
	seeds = append(seeds, bytes.Join(valid, nil)) // a whole conversation
	hello := valid[0]
	badVersion := bytes.Clone(hello)
	badVersion[2] = 2
	badMagic := bytes.Clone(hello)
	badMagic[0] = 'X'
	huge := bytes.Clone(hello)
	binary.LittleEndian.PutUint32(huge[12:], 0xffffffff)
	reserved := bytes.Clone(hello)
	reserved[5] = 1
	withFds := bytes.Clone(hello)
	withFds[4] = 1
	seeds = append(seeds,
		nil,
		hello[:5],                     // truncated header
		hello[:proto.HeaderSize],      // header only
		hello[:proto.HeaderSize+3],    // truncated payload
		huge,                          // 4 GiB payload announced
		badMagic,                      // bad magic
		badVersion,                    // wrong version
		reserved,                      // reserved bits set
		withFds,                       // announces a descriptor it does not carry
		frameBytes(0x42, 9, []byte{}), // unknown type, empty payload
		frameBytes(proto.THello, 1, []byte("not json")),
		append(bytes.Clone(valid[1]), badVersion...), // good frame, then a bad one
	)
	return seeds
}

// modelFrames parses data as a stream of frames without a socket: the
// frames ReadFrame must return, then the error it must end with.
func modelFrames(data []byte) ([]proto.Frame, error) {
	var frames []proto.Frame
	for {
		if len(data) == 0 {
			return frames, io.EOF
		}
		h, err := proto.DecodeHeader(data)
		if err != nil {
			return frames, err
		}
		data = data[proto.HeaderSize:]
		if len(data) < h.Length {
			return frames, proto.ErrTruncated
		}
		if h.NFds != 0 {
			return frames, proto.ErrFds // the fuzz input carries no descriptors
		}
		frames = append(frames, proto.Frame{Type: h.Type, ID: h.ID, Payload: data[:h.Length]})
		data = data[h.Length:]
	}
}

var sentinels = []error{proto.ErrMagic, proto.ErrVersion, proto.ErrTooLarge, proto.ErrTruncated, proto.ErrFds, proto.ErrHeader}

// sameError reports whether got is the error want stands for: io.EOF itself
// for a clean end, else the same sentinel.
func sameError(got, want error) bool {
	if want == io.EOF {
		return got == io.EOF
	}
	for _, s := range sentinels {
		if errors.Is(want, s) {
			return errors.Is(got, s)
		}
	}
	return false
}

// payloadTypes are the structs a frame of each type may carry.
func payloadTypes(t proto.Type) []any {
	switch t {
	case proto.THello:
		return []any{new(proto.Hello)}
	case proto.TOpen:
		return []any{new(proto.Open)}
	case proto.TAttach:
		return []any{new(proto.Attach)}
	case proto.TAdvise:
		return []any{new(proto.Advise)}
	case proto.TDetach:
		return []any{new(proto.Detach)}
	case proto.TClose:
		return []any{new(proto.Close)}
	case proto.TStat:
		return []any{new(proto.Empty)}
	case proto.TReply:
		return []any{new(proto.HelloReply), new(proto.OpenReply), new(proto.AttachReply), new(proto.Stats), new(proto.Empty)}
	case proto.TError:
		return []any{new(proto.Error)}
	}
	return []any{new(proto.Empty), new(map[string]any)}
}

func FuzzReadFrame(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := socketPair(t)
		written := make(chan struct{})
		go func() {
			defer close(written)
			a.Write(data) // fails once the reader gives up and closes
			a.Close()
		}()
		r := readerConn(t, b)
		var got []proto.Frame
		var err error
		for {
			var fr proto.Frame
			fr, err = r.ReadFrame()
			if err != nil {
				break
			}
			if len(fr.Fds) != 0 {
				fr.CloseFds()
				t.Fatalf("frame %d carries %d descriptors; none were sent", len(got), len(fr.Fds))
			}
			if len(fr.Payload) > proto.MaxPayload {
				t.Fatalf("frame %d has a payload of %d bytes, more than MaxPayload %d", len(got), len(fr.Payload), proto.MaxPayload)
			}
			for _, v := range payloadTypes(fr.Type) {
				_ = proto.Unmarshal(fr.Payload, v) // errors are fine; panics are not
			}
			got = append(got, fr)
		}
		b.Close()
		select {
		case <-written:
		case <-time.After(waitLimit):
			t.Fatalf("writer still blocked %v after the reader closed", waitLimit)
		}

		want, wantErr := modelFrames(data)
		if len(got) != len(want) {
			t.Fatalf("ReadFrame returned %d frames then %v; the bytes hold %d then %v", len(got), err, len(want), wantErr)
		}
		for i := range got {
			if got[i].Type != want[i].Type || got[i].ID != want[i].ID || !bytes.Equal(got[i].Payload, want[i].Payload) {
				t.Fatalf("frame %d = %v id %d %q; want %v id %d %q", i, got[i].Type, got[i].ID, got[i].Payload, want[i].Type, want[i].ID, want[i].Payload)
			}
		}
		if !sameError(err, wantErr) {
			t.Fatalf("after %d frames ReadFrame failed with %v; want %v", len(got), err, wantErr)
		}
	})
}

func FuzzDecodeHeader(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := proto.DecodeHeader(b)
		if err != nil {
			if h != (proto.Header{}) {
				t.Fatalf("DecodeHeader failed (%v) but returned %+v", err, h)
			}
			return
		}
		if h.NFds < 0 || h.NFds > proto.MaxFds || h.Length < 0 || h.Length > proto.MaxPayload {
			t.Fatalf("DecodeHeader accepted %+v, outside its bounds", h)
		}
		enc := make([]byte, proto.HeaderSize)
		proto.EncodeHeader(enc, h)
		h2, err := proto.DecodeHeader(enc)
		if err != nil || h2 != h {
			t.Fatalf("DecodeHeader(EncodeHeader(%+v)) = %+v, %v", h, h2, err)
		}
		// An accepted header has no bits the decoder ignored.
		if !bytes.Equal(enc, b[:proto.HeaderSize]) {
			t.Fatalf("header %x decodes to %+v, which encodes as %x", b[:proto.HeaderSize], h, enc)
		}
	})
}
