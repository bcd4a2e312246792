"""Errors are OSError of the class Python gives their errno, name the object
(its credentials redacted) and the offset, and carry the offset as an
attribute; an unreadable page is FaultError, and does not stick.
"""

import errno
import os
import tempfile
import unittest
import urllib.request

import filemap
import support


class Open(support.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="filemap-test-")

    def tearDown(self):
        os.rmdir(self.dir)

    def test_missing_file(self):
        path = os.path.join(self.dir, "missing.bin")
        with self.assertRaises(FileNotFoundError) as cm:
            filemap.open(path)
        e = cm.exception
        self.assertEqual(e.errno, errno.ENOENT)
        self.assertIn(path, str(e))
        self.assertIsNone(e.offset)
        with self.assertRaises(FileNotFoundError):
            filemap.open("file://" + path)

    def test_directory(self):
        with self.assertRaises(IsADirectoryError) as cm:
            filemap.open(self.dir)
        self.assertEqual(cm.exception.errno, errno.EISDIR)
        self.assertIn(self.dir, str(cm.exception))

    def test_bad_uri(self):
        for uri in ("ftp://host/object", "s3://bucket-without-key", "http:///no-host", ""):
            with self.subTest(uri=uri):
                with self.assertRaises(OSError) as cm:
                    filemap.open(uri)
                self.assertIs(type(cm.exception), OSError)
                self.assertEqual(cm.exception.errno, errno.EINVAL)
                self.assertIn(uri, str(cm.exception))

    def test_bad_arguments(self):
        path = support.env("FILEMAP_TEST_DATA")
        with self.assertRaises(ValueError):
            filemap.open(path, advice="sideways")
        with self.assertRaises(ValueError):
            filemap.open(path, advice=filemap.WILLNEED)  # for advise(), not open()
        with self.assertRaises(TypeError):
            filemap.open(path, advice=1.5)
        with self.assertRaises(ValueError):
            filemap.open(path + "\0")
        with self.assertRaises(TypeError):
            filemap.open(path, filemap.RANDOM)  # the options are keywords
        with self.assertRaises(TypeError):
            filemap.Mapping()

    def test_path_like_and_advice_names(self):
        import pathlib
        path = pathlib.Path(support.env("FILEMAP_TEST_DATA"))
        for advice in ("random", filemap.SEQUENTIAL, None):
            with filemap.open(path, advice=advice) as m:
                self.assertEqual(m.read_at(0, 4096), support.data_at(0, 4096))


class FailingPage(support.TestCase):
    """FILEMAP_TEST_URI is an HTTP object whose server fails every request for
    the page at FILEMAP_TEST_BAD_OFFSET until FILEMAP_TEST_HEAL is fetched;
    FILEMAP_TEST_SOCKET is a handler that does not retry."""

    def test_fault_error(self):
        uri = support.env("FILEMAP_TEST_URI")
        bad = int(support.env("FILEMAP_TEST_BAD_OFFSET"))
        data = support.data()
        with filemap.open(uri, advice=filemap.RANDOM, socket=support.socket()) as m:
            # A read that starts before the page copies up to it and says where it stopped.
            with self.assertRaises(filemap.FaultError) as cm:
                m.read_at(bad - 100, 8192)
            e = cm.exception
            self.assertIsInstance(e, OSError)
            self.assertEqual(e.errno, errno.EIO)
            self.assertEqual(e.offset, bad)
            self.assertIn(uri, str(e))
            self.assertIn("offset %d" % bad, str(e))

            buf = bytearray(8192)
            with self.assertRaises(filemap.FaultError) as cm:
                m.readinto_at(buf, bad - 100)
            self.assertEqual(cm.exception.offset, bad)
            self.assertBytes(bytes(buf[:100]), data[bad - 100:bad], "readinto_at: the bytes before the page")

            # Its neighbours read, in the same mapping.
            neighbour = bad + (128 << 10)
            self.assertBytes(m.read_at(neighbour, 4096), data[neighbour:neighbour + 4096], "a neighbouring page")
            before = bad - (128 << 10)
            with memoryview(m) as mv:
                self.assertBytes(mv[before:before + 4096].tobytes(), data[before:before + 4096],
                                 "a neighbouring page, through the buffer")

            # The failure is not sticky: once the server serves the page, it reads.
            urllib.request.urlopen(support.env("FILEMAP_TEST_HEAL"), timeout=60).close()
            self.assertBytes(m.read_at(bad - 100, 8192), data[bad - 100:bad + 8092], "the page once served")

    def test_password_redacted(self):
        # An error names an object whose URL has a password with the password as ***.
        uri = support.env("FILEMAP_TEST_SECRET_URI")
        password = support.env("FILEMAP_TEST_PASSWORD")
        with self.assertRaises(OSError) as cm:
            filemap.open(uri, socket=support.socket())
        self.assertNotIn(password, str(cm.exception))
        self.assertIn("***", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
