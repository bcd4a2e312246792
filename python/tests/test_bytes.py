"""The mapping's bytes, through each way Python reads them, are the object's:
every byte checked, for whatever FILEMAP_TEST_URI names (a local file, an
HTTP object, an S3 object).
"""

import ctypes
import tempfile
import unittest

import numpy as np

import filemap
import support


class Bytes(support.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.uri = support.env("FILEMAP_TEST_URI")
        cls.data = support.data()
        cls.m = filemap.open(cls.uri, socket=support.socket())

    @classmethod
    def tearDownClass(cls):
        cls.m.close()

    def test_size_and_version(self):
        self.assertEqual(self.m.size, len(self.data))
        self.assertEqual(len(self.m), len(self.data))
        self.assertTrue(self.m.version, "no version")
        self.assertFalse(self.m.copy_on_write)
        self.assertFalse(self.m.inherited)
        self.assertFalse(self.m.closed)
        # The version pins the same bytes.
        with filemap.open(self.uri, version=self.m.version, socket=support.socket()) as again:
            self.assertEqual(again.version, self.m.version)
            self.assertBytes(again.read_at(0, len(self.data)), self.data, "a mapping at the version")

    def test_memoryview(self):
        with memoryview(self.m) as mv:
            self.assertTrue(mv.readonly)
            self.assertEqual(mv.nbytes, len(self.data))
            self.assertEqual(mv[len(self.data) - 1], self.data[-1])
            self.assertBytes(mv.tobytes(), self.data, "memoryview(m)")
            with self.assertRaises(TypeError):
                mv[0] = 0

    def test_numpy_frombuffer(self):
        a = np.frombuffer(self.m, dtype=np.uint8)
        self.assertEqual(a.size, len(self.data))
        self.assertFalse(a.flags.writeable, "an array of a read-only mapping is writable")
        self.assertFalse(a.flags.owndata)
        # No copy: the array's memory is the buffer the mapping exports.
        self.assertEqual(a.ctypes.data, address_of(self.m))
        with memoryview(self.m) as mv:
            self.assertEqual(address_of(mv), address_of(self.m))
        self.assertTrue(np.shares_memory(a, np.frombuffer(self.m, dtype=np.uint8)))
        want = np.frombuffer(self.data, dtype=np.uint8)
        if not np.array_equal(a, want):
            self.fail("numpy.frombuffer(m): first difference at offset %d" % np.flatnonzero(a != want)[0])
        words = len(self.data) // 8
        w = np.frombuffer(self.m, dtype="<u8", count=words)
        self.assertTrue(np.array_equal(w, np.frombuffer(self.data, dtype="<u8", count=words)),
                        "numpy.frombuffer(m, dtype='<u8') is not the object's words")
        del a, w

    def test_read_at(self):
        n = len(self.data)
        got = b"".join(self.m.read_at(off, 1 << 20) for off in range(0, n, 1 << 20))
        self.assertBytes(got, self.data, "read_at in 1 MiB pieces")
        for off, size in ((0, 1), (4095, 2), (12345, 100000), (n - 5000, 1 << 20), (n - 1, 1)):
            self.assertBytes(self.m.read_at(off, size), self.data[off:off + size],
                             "read_at(%d, %d)" % (off, size))
        self.assertEqual(self.m.read_at(n, 10), b"")
        self.assertEqual(self.m.read_at(n + 4096, 10), b"")
        self.assertEqual(self.m.read_at(0, 0), b"")
        with self.assertRaises(ValueError):
            self.m.read_at(-1, 10)

    def test_readinto_at(self):
        buf = bytearray(300000)
        off = 4000
        self.assertEqual(self.m.readinto_at(buf, off), len(buf))
        self.assertBytes(bytes(buf), self.data[off:off + len(buf)], "readinto_at a bytearray")
        arr = np.zeros(1 << 16, dtype=np.uint8)
        off = len(self.data) - 1000
        self.assertEqual(self.m.readinto_at(arr, off), 1000)
        self.assertBytes(arr[:1000].tobytes(), self.data[off:], "readinto_at an array at the end")
        with self.assertRaises(TypeError):
            self.m.readinto_at(b"read-only", 0)

    def test_advise(self):
        self.m.advise(filemap.SEQUENTIAL)
        self.m.advise("willneed", 0, 1 << 20)
        self.m.advise(filemap.DONTNEED, offset=4096, length=1 << 20)
        self.m.advise(filemap.NORMAL)
        # Dropped from the mapping, the pages map again from the cache, unchanged.
        with memoryview(self.m) as mv:
            self.assertBytes(mv[:2 << 20].tobytes(), self.data[:2 << 20], "the pages after DONTNEED")
        with self.assertRaises(ValueError):
            self.m.advise("sideways")
        with self.assertRaises(ValueError):
            self.m.advise(filemap.WILLNEED, -1)

    def test_copy_on_write(self):
        with filemap.open(self.uri, copy_on_write=True, socket=support.socket()) as w:
            self.assertTrue(w.copy_on_write)
            a = np.frombuffer(w, dtype=np.uint8)
            self.assertTrue(a.flags.writeable)
            off = len(self.data) // 2
            a[off:off + 4] = [1, 2, 3, 4]
            # The array is the mapping: read_at reads the mapping, and sees the write.
            self.assertEqual(w.read_at(off, 4), b"\x01\x02\x03\x04")
            with memoryview(w) as mv:
                self.assertEqual(mv[off + 3], 4)
            del a
        # The write went to a private copy: the object and other mappings keep their bytes.
        self.assertBytes(self.m.read_at(off, 4), self.data[off:off + 4], "another mapping after a private write")
        self.assertBytes(support.data_at(off, 4), self.data[off:off + 4], "the object after a private write")


class Empty(support.TestCase):
    def test_empty_file(self):
        with tempfile.NamedTemporaryFile(prefix="filemap-test-") as f:
            with filemap.open(f.name) as m:
                self.assertEqual(len(m), 0)
                self.assertEqual(m.read_at(0, 10), b"")
                self.assertEqual(m.readinto_at(bytearray(10), 0), 0)
                with memoryview(m) as mv:
                    self.assertEqual(mv.nbytes, 0)
                self.assertEqual(np.frombuffer(m, dtype=np.uint8).size, 0)
                m.advise(filemap.WILLNEED)


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


def address_of(obj):
    """The address of the first byte of obj's buffer, as the buffer protocol hands it out."""
    view = _PyBuffer()
    ctypes.pythonapi.PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    ctypes.pythonapi.PyBuffer_Release.argtypes = [ctypes.POINTER(_PyBuffer)]
    if ctypes.pythonapi.PyObject_GetBuffer(obj, ctypes.byref(view), 0) != 0:
        raise BufferError("PyObject_GetBuffer failed")
    try:
        return view.buf
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


if __name__ == "__main__":
    unittest.main()
