package filemap_test

// Examples for the package documentation. They have no Output comments:
// they need a daemon or a private handler and real objects, so go test
// compiles them but does not run them. The tests run the same calls.

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log"

	"github.com/filemap/filemap"
)

// Map a file and read it through its pages; a page that cannot be read
// becomes an error instead of killing the program.
func ExampleOpen() {
	ctx := context.Background()
	m, err := filemap.Open(ctx, "/data/model.bin")
	if err != nil {
		log.Fatal(err) // a bad URI, a missing file, no permission: known here
	}
	defer m.Close()

	var sum uint32
	err = m.Guard(func() { sum = crc32.ChecksumIEEE(m.Bytes()) })
	var fe *filemap.FaultError
	if errors.As(err, &fe) {
		log.Fatalf("page at offset %d unreadable: %v", fe.Offset, err)
	}
	fmt.Printf("%s: %d bytes, crc32 %08x\n", "/data/model.bin", m.Size(), sum)
}

// A copy-on-write mapping: the program may patch the bytes it maps; the
// object, the shared cache and every other mapping keep the original.
func ExampleWithCopyOnWrite() {
	ctx := context.Background()
	m, err := filemap.Open(ctx, "s3://models/llama/weights.bin", filemap.WithCopyOnWrite())
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	if _, err := m.WriteAt([]byte{0, 0, 0, 0}, 4096); err != nil {
		log.Fatal(err)
	}
	m.Bytes()[0] = 1 // a plain store works too: this page becomes this process's own
}

// Every host of a fleet maps the same version of an object: the one the
// first host saw, passed on by name.
func ExampleWithVersion() {
	ctx := context.Background()
	first, err := filemap.Open(ctx, "s3://snapshots/vm1/mem")
	if err != nil {
		log.Fatal(err)
	}
	version := first.Version() // the VersionId in a versioned bucket, else the ETag
	first.Close()

	// Elsewhere, later, whatever the key holds by then:
	m, err := filemap.Open(ctx, "s3://snapshots/vm1/mem", filemap.WithVersion(version))
	if err != nil {
		log.Fatal(err) // the version is gone, or (an ETag) no longer current
	}
	defer m.Close()
}

// What the daemon holds: each object's bytes cached and who uses it.
func ExampleCachedObjects() {
	objs, err := filemap.CachedObjects(context.Background(), filemap.WithSocket("/run/filemap/filemap.sock"))
	if err != nil {
		log.Fatal(err)
	}
	for _, o := range objs {
		fmt.Printf("%10d of %10d bytes cached, %d users: %s (%s)\n", o.CacheBytes, o.Size, o.Users, o.URI, o.Version)
	}
}
