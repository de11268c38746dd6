"""Deterministic, streaming tar layers written straight into a layout's blob store.

One pass over the input: the tar stream is hashed (the layer's ``diff_id``), compressed, hashed
again (its ``digest``) and written to a temporary file that is then renamed to its digest. Memory
stays flat whatever the file sizes. Entries carry only what we decide (sorted by the caller,
fixed mtime, uid/gid 0, empty user names, normalized modes), so identical input gives identical
bytes on any machine.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from oci.errors import BuildError

COPY_BUF = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One tar entry. ``source`` is read for files; ``linkname`` is the target of a symlink."""

    arcname: str
    kind: str  # "dir" | "file" | "symlink"
    mode: int = 0o644
    source: Path | None = None
    size: int = 0
    linkname: str = ""


@dataclass(frozen=True)
class LayerBlob:
    digest: str  # sha256 of the blob as stored (compressed when compressed)
    diff_id: str  # sha256 of the uncompressed tar
    size: int


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it to ``sink``."""

    def __init__(self, sink):
        self.sink = sink
        self.hash = hashlib.sha256()
        self.count = 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.count += len(data)
        self.sink.write(data)
        return len(data)

    def tell(self) -> int:  # tarfile asks for its start offset
        return self.count

    def flush(self) -> None:
        pass


def dirs_for(paths: Iterable[str]) -> list[Entry]:
    """Directory entries for every parent of ``paths`` (``a/b/c`` gives ``a/`` and ``a/b/``)."""
    seen: set[str] = set()
    for p in paths:
        parts = p.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            seen.add("/".join(parts[:i]))
    return [Entry(d, "dir", 0o755) for d in sorted(seen)]


def write_layer(entries: list[Entry], tmp_dir: Path, compression: str, mtime: int) -> tuple[LayerBlob, Path]:
    """Write ``entries`` (in the given order) as one tar layer into a temp file under ``tmp_dir``.

    Returns the layer's digests and the temp file; the caller renames it into the blob store.
    On failure the temp file is removed and BuildError names the file that could not be read.
    """
    fd, tmp_name = _mkstemp(tmp_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            outer = _HashingWriter(fh)
            compressor = _compressor(compression, outer)
            inner = _HashingWriter(compressor) if compressor is not None else outer
            with tarfile.open(fileobj=inner, mode="w", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUF) as tar:
                for entry in entries:
                    _add(tar, entry, mtime)
            if compressor is not None:
                compressor.close()
        blob = LayerBlob(digest=_digest(outer.hash), diff_id=_digest(inner.hash), size=outer.count)
        return blob, tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _mkstemp(tmp_dir: Path) -> tuple[int, str]:
    import tempfile

    tmp_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=".layer-", dir=tmp_dir)


def _compressor(compression: str, sink):
    if compression == "none":
        return None
    if compression == "gzip":
        # filename="" and mtime=0 keep the gzip header free of build-machine facts.
        return gzip.GzipFile(filename="", mode="wb", fileobj=sink, compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard

        # Single-threaded on purpose: its output depends only on the level and the input.
        return zstandard.ZstdCompressor(level=3).stream_writer(sink, closefd=False)
    raise BuildError(f"unknown compression {compression!r}; use none, gzip or zstd")


def _add(tar: tarfile.TarFile, entry: Entry, mtime: int) -> None:
    info = tarfile.TarInfo(entry.arcname)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.linkname
        info.mode = 0o777
        tar.addfile(info)
    else:
        info.type = tarfile.REGTYPE
        info.size = entry.size
        try:
            with open(entry.source, "rb") as src:
                tar.addfile(info, src)
        except OSError as exc:
            # tarfile reports a file that shrank mid-build as "unexpected end of data".
            raise BuildError(
                f"{entry.source}: could not be read completely ({exc.strerror or exc}); "
                "make sure nothing modifies the model while it is packaged"
            ) from exc


def _digest(h) -> str:
    return "sha256:" + h.hexdigest()
