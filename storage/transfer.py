"""Moving bytes: parallel files, ranged parts of large files, retries that resume, hashing while
writing.

A file larger than the part size is preallocated and fetched as concurrent ranged parts written
in place (pwrite). Its hashes (xxh3-128 for the manifest, and the source's MD5/SHA-256/CRC32C
when it offers one) are advanced in file order right behind the writers: when the part at the
hash frontier completes, its bytes are hashed from the page cache they were just written to —
never fetched twice and never re-read after the download. Smaller files stream through their
hashers directly; when the first response of such a stream reports a whole-object checksum that
is cheaper to compute than the listed one (S3's CRC32 on an unranged GET, versus the MD5 its ETag
stands for), that file is verified against it instead. The hashers live here, not in the stream,
so a stream resumed by a ranged request keeps hashing where it stopped.

Each completed part and file is appended to the staging journal, so a restarted download skips
what was finished. A failure that is worth retrying resumes the same byte stream with a ranged
request from the first byte not yet received.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from storage.config import Settings
from storage.errors import IntegrityError, StorageError, TransientError, TransientExhaustedError
from storage.hashing import cheaper_checksum, checker_value, checksum_matches, new_checker, new_xxh3
from storage.manifest import BOOT_ID
from storage.progress import Progress
from storage.sources.base import RemoteFile, Source

log = logging.getLogger("modeldepot")
HASH_CHUNK = 1 << 20


def _sync_file_range():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a finished part to disk now, without waiting for it, so
    the fdatasync before publishing finds little left to do (disk and network overlap)."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class Cancelled(Exception):
    """Another task failed; this one stopped early."""


def backoff(attempt: int, settings: Settings) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(settings.backoff_cap, settings.backoff_base * (2 ** attempt)))


def call_with_retries(fn: Callable, settings: Settings, what: str, cancel: threading.Event | None = None):
    """Call ``fn`` until it does not raise TransientError, at most ``settings.retries`` times."""
    for attempt in range(settings.retries):
        try:
            return fn()
        except TransientError as exc:
            if attempt + 1 >= settings.retries:
                raise TransientExhaustedError(f"{exc} (gave up after {settings.retries} attempts)") from None
            delay = backoff(attempt, settings)
            log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
            if cancel is not None and cancel.wait(delay):
                raise Cancelled() from None
            if cancel is None:
                time.sleep(delay)
    raise AssertionError("unreachable")


def resilient_stream(source: Source, file: RemoteFile, start: int, end: int | None, settings: Settings,
                     cancel: threading.Event, meta: dict | None = None) -> Iterator[bytes]:
    """Bytes ``[start, end)`` of ``file``, surviving transient failures by resuming at the offset
    reached. Raises TransientExhaustedError when ``settings.retries`` consecutive attempts fail
    without progress; IntegrityError when the source sends more bytes than asked.

    ``meta`` is handed to every ``source.read`` (see ``Source.read``): what the first response
    reports is there before the first chunk is yielded; resumed (ranged) reads report nothing."""
    offset = start
    failures = 0
    while True:
        try:
            reads = source.read(file, offset, end) if meta is None else source.read(file, offset, end, meta=meta)
            for chunk in reads:
                if cancel.is_set():
                    raise Cancelled()
                if end is not None and offset + len(chunk) > end:
                    raise IntegrityError(f"{source.describe()}: {file.path} is larger than the {end} bytes listed")
                offset += len(chunk)
                failures = 0
                yield chunk
            if end is not None and offset < end:
                raise TransientError(f"{source.describe()}: {file.path} ended after {offset} of {end} bytes")
            return
        except TransientError as exc:
            failures += 1
            if failures >= settings.retries:
                raise TransientExhaustedError(f"{exc} (gave up after {settings.retries} attempts)") from None
            delay = backoff(failures - 1, settings)
            log.warning("%s; resuming %s at byte %d in %.1fs", exc, file.path, offset, delay)
            if cancel.wait(delay):
                raise Cancelled() from None


class FileJob:
    """One file being written into staging: its parts, what is done, and its hashes."""

    def __init__(self, remote: RemoteFile, path: Path, part_size: int, supports_ranges: bool,
                 done_parts: set[int], journal: Callable[..., None], ident: str, durable: bool):
        self.remote = remote
        self.path = path
        self.ident = ident
        self.durable = durable
        self._journal = journal
        size = remote.size
        if size is None or not supports_ranges or size <= part_size:
            self.parts = [(0, size)]
        else:
            self.parts = [(s, min(s + part_size, size)) for s in range(0, size, part_size)]
        self.done = [i in done_parts for i in range(len(self.parts))]
        if len(self.parts) == 1:
            self.done = [False]  # a single stream restarts from 0: its hashes are computed in-stream
        self.frontier = 0  # parts [0, frontier) are hashed
        self.hashing = False
        self.lock = threading.Lock()
        self.xxh3 = new_xxh3()
        self.expected = dict(remote.checksums)  # algorithm -> value the source promises
        if (alt := cheaper_checksum(remote.alt_checksums, self.expected)) is not None:
            self.expected = dict([alt])
        self.checkers = {a: c for a in self.expected if (c := new_checker(a)) is not None}
        self.written = 0
        self.fd: int | None = None

    @property
    def pending_parts(self) -> list[int]:
        return [i for i, d in enumerate(self.done) if not d]

    @property
    def resumed_bytes(self) -> int:
        return sum((e or 0) - s for (s, e), d in zip(self.parts, self.done, strict=True) if d)

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not any(self.done)
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0)
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            from storage.archive import _remove

            _remove(self.path)
        self.fd = os.open(self.path, flags, 0o644)
        size = self.remote.size
        if size:
            if os.fstat(self.fd).st_size > size:
                os.ftruncate(self.fd, size)
            if len(self.parts) > 1:
                try:
                    os.posix_fallocate(self.fd, 0, size)
                except OSError:
                    os.ftruncate(self.fd, size)  # a filesystem without fallocate: sparse is fine

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    # -- writing ---------------------------------------------------------------------------------
    def run_part(self, index: int, source: Source, settings: Settings, cancel: threading.Event,
                 progress: Progress) -> bool:
        """Fetch part ``index``; True when this call completed the file."""
        start, end = self.parts[index]
        offset = start
        single = len(self.parts) == 1
        meta: dict | None = {} if single else None
        for chunk in resilient_stream(source, self.remote, start, end, settings, cancel, meta):
            if meta is not None:  # the first chunk: nothing is hashed yet
                self._adopt_stream_checksum(meta)
                meta = None
            n = os.pwrite(self.fd, chunk, offset)
            if n != len(chunk):  # pwrite to a regular file is short only on ENOSPC-like trouble
                mv = memoryview(chunk)[n:]
                while mv:
                    w = os.pwrite(self.fd, mv, offset + n)
                    n += w
                    mv = mv[w:]
            offset += len(chunk)
            if single:
                self._hash(chunk)
            progress.advance(len(chunk))
        if single:
            self.parts[0] = (0, offset)
            with self.lock:
                self.done[0] = True
                self.frontier = 1
            return True
        if self.durable:
            start_writeback(self.fd, start, offset - start)
        # Part records hold only within this boot (page cache survives kill -9, not a power loss);
        # a finished file is fdatasync'd before it is recorded, so its record holds across boots.
        self._journal(event="part", path=self.remote.path, id=self.ident, i=index, boot=BOOT_ID)
        return self.part_done(index)

    def _adopt_stream_checksum(self, meta: dict) -> None:
        """Verify against a whole-object checksum the first response reported, when it is cheaper
        than what the listing promised (CRC32 at 2.7 GB/s against MD5 at 0.46) or the listing
        promised none: it replaces them. One check suffices — either value is the source's word on
        the same bytes (If-Match pins the listed version). The checker comes from ``new_checker``
        like the others, so whoever stubs that (bench/noverify_driver.py) stubs this too.
        Called before the first chunk is hashed."""
        learned = cheaper_checksum(meta.get("checksums") or {}, self.expected)
        if learned is None:
            return
        algorithm, value = learned
        checker = new_checker(algorithm)
        self.expected = {algorithm: value}
        self.checkers = {algorithm: checker} if checker is not None else {}

    def _hash(self, data) -> None:
        self.xxh3.update(data)
        for c in self.checkers.values():
            c.update(data)

    def part_done(self, index: int) -> bool:
        """Mark part ``index`` written and advance the hashes; True when the whole file is hashed."""
        with self.lock:
            self.done[index] = True
            if self.hashing:
                return False  # the thread advancing the frontier will reach this part
            self.hashing = True
        while True:
            with self.lock:
                i = self.frontier
                if i >= len(self.parts) or not self.done[i]:
                    self.hashing = False
                    return i >= len(self.parts)
            start, end = self.parts[i]
            pos = start
            while pos < end:
                data = os.pread(self.fd, min(HASH_CHUNK, end - pos), pos)
                if not data:
                    raise IntegrityError(f"{self.remote.path}: staging file shorter than written")
                self._hash(data)
                pos += len(data)
            with self.lock:
                self.frontier = i + 1

    def finish(self, describe: str) -> tuple[int, str]:
        """Check size and source checksums; journal the file as done. Returns (size, xxh3)."""
        size = os.fstat(self.fd).st_size
        expected = self.remote.size
        if expected is not None and size != expected:
            raise IntegrityError(f"{describe}: {self.remote.path} has {size} bytes, the source listed {expected}")
        for algo, checker in self.checkers.items():
            got = checker_value(algo, checker)
            want = self.expected[algo]
            if not checksum_matches(algo, got, want):
                raise IntegrityError(f"{describe}: {self.remote.path} failed its {algo} check "
                                     f"(got {got}, the source says {want}); run it again")
        if self.durable:
            os.fdatasync(self.fd)
        digest = self.xxh3.hexdigest()
        self._journal(event="file", path=self.remote.path, id=self.ident, size=size, xxh3=digest)
        return size, digest


class Runner:
    """A bounded pool that runs tasks and stops them all at the first failure."""

    def __init__(self, concurrency: int):
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="modeldepot")
        self.cancel = threading.Event()
        self.futures = []

    def submit(self, fn, *args) -> None:
        self.futures.append(self.pool.submit(self._guard, fn, *args))

    def _guard(self, fn, *args):
        if self.cancel.is_set():
            raise Cancelled()
        return fn(*args)

    def wait(self) -> None:
        try:
            done, pending = wait(self.futures, return_when=FIRST_EXCEPTION)
            failure = _first_failure(done)
            if failure is not None:
                self.cancel.set()
                for f in pending:
                    f.cancel()
                wait(pending)
                raise _first_failure(self.futures, prefer=failure)
        except BaseException:
            self.cancel.set()  # KeyboardInterrupt/SIGTERM: workers stop at their next chunk
            raise
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _first_failure(futures, prefer: BaseException | None = None) -> BaseException | None:
    """The most telling error among ``futures``: a StorageError over Cancelled, else any."""
    errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
    for exc in errors:
        if isinstance(exc, StorageError) and not isinstance(exc, TransientExhaustedError):
            return exc
    for exc in errors:
        if not isinstance(exc, Cancelled):
            return exc
    return prefer if prefer is not None else (errors[0] if errors else None)
