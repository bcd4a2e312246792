"""close() and the with-statement: a closed mapping refuses every use, and
a mapping whose buffer is exported refuses to close, as mmap.mmap does."""

import gc
import threading
import unittest
import urllib.request

import numpy as np

import filemap
import support


class Close(support.TestCase):
    def assertClosed(self, m):
        self.assertTrue(m.closed)
        self.assertEqual(repr(m), "<filemap.Mapping closed>")
        for use in (lambda: m.read_at(0, 1), lambda: m.readinto_at(bytearray(1), 0), lambda: m.advise("random"),
                    lambda: memoryview(m), lambda: len(m), lambda: m.size, lambda: m.version,
                    lambda: m.__enter__()):
            with self.assertRaises(ValueError):
                use()
        m.close()  # again: nothing

    def test_with_closes(self):
        with support.open_object() as m:
            self.assertFalse(m.closed)
            self.assertEqual(m.read_at(0, 4096), support.data_at(0, 4096))
        self.assertClosed(m)

    def test_with_closes_on_exception(self):
        with self.assertRaises(KeyError):
            with support.open_object() as m:
                raise KeyError("in the block")
        self.assertClosed(m)

    def test_close_while_memoryview_exported(self):
        m = support.open_object()
        mv = memoryview(m)
        with self.assertRaises(BufferError) as cm:
            m.close()
        self.assertIn(m.name, str(cm.exception))
        # Still open, and the memoryview still reads the object.
        self.assertFalse(m.closed)
        self.assertBytes(mv[:8192].tobytes(), support.data_at(0, 8192), "the memoryview after a refused close")
        sub = mv[4096:8192]
        mv.release()
        with self.assertRaises(BufferError):
            m.close()  # the slice holds the buffer
        sub.release()
        m.close()
        self.assertClosed(m)

    def test_close_while_array_alive(self):
        m = support.open_object()
        a = np.frombuffer(m, dtype=np.uint8)
        view = a[100:200]
        del a
        with self.assertRaises(BufferError):
            m.close()
        self.assertBytes(view.tobytes(), support.data_at(100, 100), "an array after a refused close")
        del view
        gc.collect()
        m.close()
        self.assertClosed(m)

    def test_with_exit_while_exported(self):
        with self.assertRaises(BufferError):
            with support.open_object() as m:
                mv = memoryview(m)
        self.assertFalse(m.closed)
        mv.release()
        m.close()
        self.assertClosed(m)

    def test_dealloc_closes(self):
        # A mapping nobody holds is closed and unmapped by its deallocation,
        # which reports nothing.
        for _ in range(50):
            m = support.open_object()
            self.assertEqual(m.read_at(0, 16), support.data_at(0, 16))
            del m


class CloseDuringRead(support.TestCase):
    """FILEMAP_TEST_URI is an HTTP object whose server holds every request for
    the page at FILEMAP_TEST_GATE_OFFSET until FILEMAP_TEST_GATE_OPEN is
    fetched; FILEMAP_TEST_GATE_WAITING answers how many requests it holds."""

    def test_close_during_read(self):
        uri = support.env("FILEMAP_TEST_URI")
        gate = int(support.env("FILEMAP_TEST_GATE_OFFSET"))
        m = filemap.open(uri, advice=filemap.RANDOM, socket=support.socket())
        result = {}

        def read():
            try:
                result["data"] = m.read_at(gate, 4096)
            except Exception as e:  # the test reports it below
                result["error"] = e

        reader = threading.Thread(target=read)
        reader.start()
        # The read waits for the server without the GIL: this thread runs meanwhile.
        for _ in range(6000):
            with urllib.request.urlopen(support.env("FILEMAP_TEST_GATE_WAITING"), timeout=60) as r:
                if int(r.read()) > 0:
                    break
            reader.join(0.01)
        else:
            self.fail("the read of offset %d never reached the server" % gate)
        # Closed while another thread reads it: the close is left to that read.
        m.close()
        self.assertTrue(m.closed)
        with self.assertRaises(ValueError):
            m.read_at(0, 1)
        urllib.request.urlopen(support.env("FILEMAP_TEST_GATE_OPEN"), timeout=60).close()
        reader.join(60)
        self.assertFalse(reader.is_alive(), "the read did not return")
        self.assertNotIn("error", result)
        self.assertBytes(result["data"], support.data_at(gate, 4096), "the read the close waited for")


if __name__ == "__main__":
    unittest.main()
