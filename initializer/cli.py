"""``storage-initializer SRC DEST [SRC DEST ...]``: KServe's init-container contract.

Exit codes: 0 every pair downloaded and verified; 1 a download failed (one line per failed pair
on stderr, naming the URI, never a credential); 2 bad arguments (usage on stderr).
Independent pairs run concurrently. Progress goes to stderr: a live bar on a TTY, otherwise a
line every MODELDEPOT_PROGRESS_INTERVAL seconds, so an init container's log shows progress.
"""

from __future__ import annotations

import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from storage import StorageError, download
from storage.config import Settings
from storage.progress import Progress
from storage.sources import redact_uri

USAGE = "usage: storage-initializer [--cache-dir DIR] SRC_URI DEST_PATH [SRC_URI DEST_PATH ...]"
PROG = "storage-initializer"


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("modeldepot: %(message)s"))
    root = logging.getLogger("modeldepot")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def run_pair(src: str, dest: str, *, interval: float, cache_dir: str | None = None, **kwargs) -> str | None:
    """Download one pair (through the node store at ``cache_dir`` when given); the one-line
    error, or None on success."""
    progress = Progress(redact_uri(src), interval=interval)
    try:
        if cache_dir:
            from cacheagent.initializer_hook import download_via_cache

            manifest = download_via_cache(src, dest, cache_dir, progress=progress, **kwargs)
        else:
            manifest = download(src, dest, progress=progress, **kwargs)
    except StorageError as exc:
        return str(exc)
    except OSError as exc:  # a local filesystem problem: disk full, read-only, permissions
        return f"{redact_uri(src)} -> {dest}: {exc.strerror or exc} ({exc.filename or dest})"
    logging.getLogger("modeldepot").info(
        "%s -> %s: %d files, %d bytes, verified", redact_uri(src), dest, len(manifest.files), manifest.total_bytes)
    return None


def run_pairs(pairs: list[tuple[str, str]], prog: str = PROG, **kwargs) -> int:
    try:
        interval = Settings.from_env().progress_interval
    except StorageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    with ThreadPoolExecutor(max_workers=max(1, len(pairs))) as pool:
        errors = list(pool.map(lambda p: run_pair(p[0], p[1], interval=interval, **kwargs), pairs))
    failed = [e for e in errors if e]
    for message in failed:
        print(f"{prog}: error: {message}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cache_dir = os.environ.get("MODELDEPOT_CACHE_DIR") or None
    if args and args[0].startswith("--cache-dir"):
        flag = args.pop(0)
        if "=" in flag:
            cache_dir = flag.split("=", 1)[1]
        elif args:
            cache_dir = args.pop(0)
        else:
            print(USAGE, file=sys.stderr)
            return 2
    if not args or len(args) % 2:
        print(USAGE, file=sys.stderr)
        return 2
    setup_logging()
    pairs = list(zip(args[0::2], args[1::2], strict=True))
    return guarded(lambda: run_pairs(pairs, cache_dir=cache_dir))


def guarded(fn) -> int:
    """Run ``fn``; on Ctrl-C exit at once (130) instead of waiting for reads in flight. Staging is
    left as it is, so the next run resumes."""
    try:
        return fn()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
