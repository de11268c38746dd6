"""Progress of a download: a live bar on a TTY, a log line every few seconds otherwise.

An init container has no TTY, so its log gets lines like
``modeldepot: s3://b/m 1.2 GiB / 4.0 GiB (30%), 3/20 files, 250 MiB/s, ETA 12s``.
Lines name the URI redacted; they never carry a credential.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger("modeldepot")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_secs(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Thread-safe counters plus an optional reporter thread."""

    def __init__(self, label: str, *, interval: float = 5.0, stream=None, tty: bool | None = None):
        self.label = label
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total_bytes = 0
        self.total_files = 0
        self.done_bytes = 0
        self.done_files = 0
        self.skipped_bytes = 0  # already present locally (resumed or reused): not transferred
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def plan(self, files: int, nbytes: int, already: int = 0) -> None:
        with self._lock:
            self.total_files, self.total_bytes = files, nbytes
            self.done_bytes = self.skipped_bytes = already

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done_bytes += nbytes

    def file_done(self) -> None:
        with self._lock:
            self.done_files += 1

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="modeldepot-progress", daemon=True)
        self._thread.start()

    def stop(self, ok: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if ok:
            self._emit(final=True)

    def line(self) -> str:
        with self._lock:
            done, total, files, nfiles = self.done_bytes, self.total_bytes, self.done_files, self.total_files
            fresh = done - self.skipped_bytes
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        rate = fresh / elapsed
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        eta = f", ETA {human_secs((total - done) / rate)}" if rate > 0 and total > done else ""
        return (f"{self.label} {human_bytes(done)} / {human_bytes(total)}{pct}, {files}/{nfiles} files, "
                f"{human_bytes(rate)}/s{eta}")

    def _emit(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
            self.stream.flush()
        else:
            self.stream.write(f"modeldepot: {self.line()}{' done' if final else ''}\n")
            self.stream.flush()

    def _run(self) -> None:
        period = 0.2 if self.tty else self.interval
        while not self._stop.wait(period):
            self._emit()


class NullProgress(Progress):
    """Counts, reports nothing (library calls without a reporter)."""

    def __init__(self, label: str = ""):
        super().__init__(label, interval=3600, tty=False)

    def start(self) -> None:
        self._t0 = time.monotonic()

    def stop(self, ok: bool = True) -> None:
        if ok:
            log.info("%s", self.line())
