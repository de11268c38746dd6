"""flock(2) locks: one per key, one for the whole store.

Lock files are never deleted, so there is no unlink/lock race. flock locks belong to an open file,
so two Store objects in one process exclude each other just as two processes do, and a process
killed with -9 releases its locks with its file descriptors.

Order, to stay deadlock-free: a key lock (blocking) may be held while taking the store lock; the
store lock is never held while *waiting* for a key lock (eviction and fsck only try key locks).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Busy(Exception):
    """A non-blocking lock attempt found the lock held."""


class FileLock:
    def __init__(self, path: Path, *, shared: bool = False, blocking: bool = True):
        self.path = path
        self.shared = shared
        self.blocking = blocking
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        flags = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if self.blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            raise Busy(str(self.path)) from None
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_held(path: Path) -> bool:
    """True when some process holds ``path`` (shared or exclusive) right now."""
    try:
        with FileLock(path, blocking=False):
            return False
    except Busy:
        return True
