"""filemap for Python: map a local file, an HTTP(S) URL or an S3 object into
memory whose pages are read in on first touch.

    import filemap, numpy

    with filemap.open("s3://models/weights.bin", advice=filemap.RANDOM) as m:
        w = numpy.frombuffer(m, dtype=numpy.float32)  # no copy: the mapping itself
        head = m.read_at(0, 4096)                     # bytes; FaultError, not SIGBUS
        del w                                         # close() refuses while a buffer is alive

open() returns a Mapping, which has the buffer protocol (memoryview(m),
numpy.frombuffer(m)) and read_at, readinto_at, advise, size, version and
close. Errors are OSError: FileNotFoundError for a missing object and the
like, chosen by errno as OSError chooses, and FaultError (errno EIO) for a
page that cannot be read; each has an offset attribute, None where the error
names no offset. The page faults are served by the filemap handler: the
daemon at socket= or $FILEMAP_SOCKET, else a private one, the filemap
executable at $FILEMAP_EXECUTABLE, else in this package's directory, else
on PATH.
"""

from ._filemap import (
    DONTNEED,
    NORMAL,
    RANDOM,
    SEQUENTIAL,
    WILLNEED,
    FaultError,
    Mapping,
    open,
)

__all__ = ["open", "Mapping", "FaultError", "NORMAL", "RANDOM", "SEQUENTIAL", "WILLNEED", "DONTNEED"]
__version__ = "0.1.0"
