"""What the tests share. python_test.go (go test ./python) runs them in a
venv where `pip install ./python` installed the module, and hands them in
the environment what they map: FILEMAP_TEST_URI, the object; FILEMAP_TEST_DATA,
a local file of its bytes; FILEMAP_TEST_SOCKET, a `filemap serve` to use
instead of a private handler, where a test needs its flags.
"""

import os
import traceback
import unittest

import filemap


def env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError("$%s is not set: these tests are run by python_test.go (go test ./python), "
                           "which sets it" % name)
    return value


def socket():
    """The handler's socket, or None for a private handler."""
    return os.environ.get("FILEMAP_TEST_SOCKET") or None


def open_object(**options):
    """Opens the object the test maps ($FILEMAP_TEST_URI) on the test's handler."""
    return filemap.open(env("FILEMAP_TEST_URI"), socket=socket(), **options)


def data():
    """The bytes of the object the test maps."""
    with open(env("FILEMAP_TEST_DATA"), "rb") as f:
        return f.read()


def data_at(off, n):
    with open(env("FILEMAP_TEST_DATA"), "rb") as f:
        f.seek(off)
        return f.read(n)


def first_difference(got, want):
    """A message naming the first offset where got and want differ, for a failing test."""
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return "first difference at offset %d: %r, want %r" % (i, a, b)
    return "lengths %d, want %d" % (len(got), len(want))


class TestCase(unittest.TestCase):
    def assertBytes(self, got, want, what):
        if got != want:
            self.fail("%s: %s" % (what, first_difference(got, want)))

    def assertInChild(self, child):
        """Runs child() in a fork child and fails unless it returns True. The
        child says on stderr what went wrong; an exception in it is printed
        there. It leaves with os._exit, running none of the parent's cleanup."""
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                ok = child()
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, "the child failed (its stderr says why)")
