"""Where the module finds the filemap executable it runs as its private
handler: $FILEMAP_EXECUTABLE, else in the package's directory, else on PATH.
python_test.go sets PATH to a directory with no filemap."""

import errno
import os
import unittest

import filemap
import support


class Executable(support.TestCase):
    def test_missing(self):
        with self.assertRaises(OSError) as cm:
            filemap.open(support.env("FILEMAP_TEST_DATA"))
        self.assertEqual(cm.exception.errno, errno.ENOEXEC)
        self.assertIn("FILEMAP_EXECUTABLE", str(cm.exception))

    def test_beside_module(self):
        self.assertNotIn("FILEMAP_EXECUTABLE", os.environ)
        beside = os.path.join(os.path.dirname(filemap.__file__), "filemap")
        self.assertTrue(os.access(beside, os.X_OK), beside)
        path = support.env("FILEMAP_TEST_DATA")
        with filemap.open(path) as m:
            self.assertBytes(m.read_at(0, m.size), support.data(), "a mapping served by the filemap beside the module")


if __name__ == "__main__":
    unittest.main()
