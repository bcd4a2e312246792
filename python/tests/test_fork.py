"""A fork child keeps its parent's mappings and reads them, every byte; its
close of an inherited mapping only unmaps it there."""

import errno
import multiprocessing
import os
import sys
import unittest

import numpy as np

import filemap
import support

# The mapping the pool's workers inherit: fork copies it, pickle cannot.
inherited = None


def check_part(part):
    """check_part runs in a pool worker: it reads part (start, end) of the
    inherited mapping through the buffer and read_at and compares it with the
    object's bytes. It returns what went wrong, or None."""
    start, end = part
    m = inherited
    if not m.inherited:
        return "[%d, %d): the worker's mapping is not inherited" % (start, end)
    want = support.data_at(start, end - start)
    got = np.frombuffer(m, dtype=np.uint8)[start:end].tobytes()
    if got != want:
        return "[%d, %d) through the buffer: %s" % (start, end, support.first_difference(got, want))
    got = m.read_at(start, end - start)
    if got != want:
        return "[%d, %d) with read_at: %s" % (start, end, support.first_difference(got, want))
    return None


class Fork(support.TestCase):
    """Run with CAP_SYS_PTRACE, which the kernel wants for UFFD_FEATURE_EVENT_FORK."""

    def test_os_fork(self):
        data = support.data()
        m = support.open_object()
        self.assertFalse(m.dontfork, "the mapping is MADV_DONTFORK: the tests need CAP_SYS_PTRACE (root)")

        def child():
            if not m.inherited:
                print("child: the mapping is not inherited", file=sys.stderr)
                return False
            if bytes(memoryview(m)) != data:
                print("child: through the buffer: " + support.first_difference(bytes(memoryview(m)), data),
                      file=sys.stderr)
                return False
            if m.read_at(0, len(data)) != data:
                print("child: with read_at: " + support.first_difference(m.read_at(0, len(data)), data),
                      file=sys.stderr)
                return False
            m.close()  # only unmaps: the parent's handle stays open
            return m.closed

        # The parent touches no page first: the child's faults are its own.
        self.assertInChild(child)
        # After the child's close, the parent's mapping is served: its pages,
        # dropped, fault again.
        self.assertFalse(m.inherited)
        m.advise(filemap.DONTNEED)
        self.assertBytes(bytes(memoryview(m)), data, "the parent, after its child closed")
        m.close()

    def test_pool(self):
        global inherited
        size = len(support.data())
        inherited = support.open_object()
        try:
            parts = 16
            step = -(-size // parts) // 4096 * 4096 + 4096
            bounds = [(s, min(s + step, size)) for s in range(0, size, step)]
            bounds[-1] = (bounds[-1][0], size)
            with multiprocessing.get_context("fork").Pool(4) as pool:
                problems = pool.map(check_part, bounds, chunksize=1)
            self.assertEqual(bounds[0][0], 0)
            self.assertEqual(bounds[-1][1], size)
            for (_, end), (start, _) in zip(bounds, bounds[1:]):
                self.assertEqual(end, start, "the parts leave a gap")
            self.assertEqual([p for p in problems if p], [])
        finally:
            inherited.close()
            inherited = None


class DontFork(support.TestCase):
    """Run without CAP_SYS_PTRACE: the kernel does not tell the handler of fork
    children, so the mapping is MADV_DONTFORK and a child has none of it."""

    def test_child_without_mapping(self):
        data = support.data()
        m = support.open_object()
        self.assertTrue(m.dontfork, "the mapping is inherited: run this test without CAP_SYS_PTRACE")

        def child():
            # An error, not a buffer at an address this process has nothing mapped at.
            try:
                memoryview(m)
                print("child: memoryview(m) of a mapping it does not have", file=sys.stderr)
                return False
            except BufferError as e:
                if m.name not in str(e) or "MADV_DONTFORK" not in str(e):
                    print("child: BufferError names neither the object nor why: %s" % e, file=sys.stderr)
                    return False
            try:
                m.read_at(0, 10)
                print("child: read_at of a mapping it does not have", file=sys.stderr)
                return False
            except OSError as e:
                if e.errno == errno.EBADF and m.inherited:
                    m.close()
                    return True
                print("child: read_at: %r, want EBADF" % e, file=sys.stderr)
                return False

        self.assertInChild(child)
        self.assertBytes(bytes(memoryview(m)), data, "the parent, after its child closed")
        m.close()


if __name__ == "__main__":
    unittest.main()
