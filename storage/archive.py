"""Safe extraction of archives and image layers into a staging directory.

Refused (UnsafeArchiveError, nothing published): absolute paths, ``..`` components, symlinks or
hard links that resolve outside the target, writes through a symlink, device and FIFO entries.
Every regular file is hashed (xxh3-128) while it is written, so the manifest needs no second
read. OCI whiteouts (``.wh.NAME``) are reported so that layer merging can delete NAME.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from storage.errors import UnsafeArchiveError
from storage.hashing import new_xxh3

COPY_CHUNK = 1 << 20
ARCHIVE_SUFFIXES = {".tar": "tar", ".tar.gz": "tar+gzip", ".tgz": "tar+gzip", ".zip": "zip"}


def archive_kind(name: str) -> str | None:
    lower = name.lower()
    for suffix, kind in ARCHIVE_SUFFIXES.items():
        if lower.endswith(suffix):
            return kind
    return None


@dataclass
class Extracted:
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # rel path -> (size, xxh3)
    links: dict[str, str] = field(default_factory=dict)              # rel path -> symlink target
    whiteouts: list[str] = field(default_factory=list)


class IterReader(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks (no seeking)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _Extractor:
    def __init__(self, target: Path, prefix: str, what: str):
        self.target = target
        self.root = os.path.realpath(target)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.what = what
        self.out = Extracted()

    def refuse(self, name: str, why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{self.what}: refusing entry {name!r}: {why}; nothing was published")

    def relname(self, raw: str) -> str | None:
        """Entry name relative to the target, None when outside the kept prefix."""
        name = raw.replace("\\", "/")
        if name.startswith("/") and not self.prefix:
            raise self.refuse(raw, "absolute path")
        stripped = name.lstrip("/") if self.prefix else name
        while stripped.startswith("./"):
            stripped = stripped[2:]
        if self.prefix:
            if not stripped.startswith(self.prefix):
                return None
            stripped = stripped[len(self.prefix):]
        if not stripped or stripped in (".", "./"):
            return ""
        if any(part == ".." for part in stripped.split("/")):
            raise self.refuse(raw, "'..' in the path")
        return posixpath.normpath(stripped)

    def _parent_ok(self, rel: str) -> Path:
        path = self.target / rel
        parent = path.parent
        parent.mkdir(parents=True, exist_ok=True)
        real = os.path.realpath(parent)
        if real != self.root and not real.startswith(self.root + os.sep):
            raise self.refuse(rel, "it would be written through a link that leaves the destination")
        return path

    def _inside(self, rel_target: str) -> bool:
        return not (rel_target.startswith("../") or rel_target == ".." or rel_target.startswith("/"))

    def dir(self, rel: str) -> None:
        if rel:
            self._parent_ok(rel).mkdir(exist_ok=True)

    def file(self, rel: str, src, mode: int = 0o644) -> None:
        base = posixpath.basename(rel)
        if base.startswith(".wh."):
            self.out.whiteouts.append(posixpath.join(posixpath.dirname(rel), base[4:]))
            return
        path = self._parent_ok(rel)
        _remove(path)  # never O_TRUNC an existing inode: it may be hard-linked to another entry
        h = new_xxh3()
        size = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            while chunk := src.read(COPY_CHUNK):
                h.update(chunk)
                os.write(fd, chunk)  # regular files: a full write or an exception
                size += len(chunk)
        finally:
            os.close(fd)
        os.chmod(path, 0o755 if mode & 0o111 else 0o644)
        self.out.files[rel] = (size, h.hexdigest())
        self.out.links.pop(rel, None)

    def symlink(self, rel: str, target: str) -> None:
        if target.startswith("/"):
            raise self.refuse(rel, f"symlink to absolute path {target!r}")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        if not self._inside(resolved):
            raise self.refuse(rel, f"symlink {target!r} points outside the destination")
        path = self._parent_ok(rel)
        _remove(path)
        os.symlink(target, path)
        self.out.links[rel] = target
        self.out.files.pop(rel, None)

    def hardlink(self, rel: str, linkname: str) -> None:
        src_rel = self.relname(linkname)
        if src_rel is None or src_rel not in self.out.files:
            raise self.refuse(rel, f"hard link to {linkname!r}, which is not a file extracted before it")
        path = self._parent_ok(rel)
        _remove(path)
        os.link(self.target / src_rel, path)
        self.out.files[rel] = self.out.files[src_rel]


def extract_tar(chunks: Iterator[bytes], kind: str, target: Path, *, prefix: str = "", what: str) -> Extracted:
    """Stream a tar (``tar``, ``tar+gzip``, ``tar+zstd``) from ``chunks`` into ``target``."""
    raw = io.BufferedReader(IterReader(chunks), buffer_size=COPY_CHUNK)
    if kind == "tar+zstd":
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_size=COPY_CHUNK)
        mode = "r|"
    else:
        stream = raw
        mode = "r|gz" if kind == "tar+gzip" else "r|"
    ex = _Extractor(target, prefix, what)
    try:
        with tarfile.open(fileobj=stream, mode=mode, bufsize=COPY_CHUNK) as tar:
            for member in tar:
                rel = ex.relname(member.name)
                if rel is None:
                    continue
                if member.isdir():
                    ex.dir(rel)
                elif not rel:
                    continue
                elif member.isreg():
                    ex.file(rel, tar.extractfile(member), member.mode)
                elif member.issym():
                    ex.symlink(rel, member.linkname)
                elif member.islnk():
                    ex.hardlink(rel, member.linkname)
                else:
                    raise ex.refuse(member.name, "device, FIFO or other special file")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, UnsafeArchiveError):
            raise
        from storage.errors import IntegrityError

        raise IntegrityError(f"{what}: not a readable {kind} archive ({exc})") from None
    return ex.out


def extract_zip(path: Path, target: Path, *, what: str) -> Extracted:
    """Extract the zip at ``path`` (zip needs random access, so it is downloaded first)."""
    ex = _Extractor(target, "", what)
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                rel = ex.relname(info.filename)
                if rel is None:
                    continue
                mode = info.external_attr >> 16
                if info.is_dir():
                    ex.dir(rel)
                elif not rel:
                    continue
                elif stat.S_ISLNK(mode):
                    ex.symlink(rel, zf.read(info).decode("utf-8", "surrogateescape"))
                elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                    raise ex.refuse(info.filename, "device, FIFO or other special file")
                else:
                    with zf.open(info) as src:
                        ex.file(rel, src, mode)
    except (zipfile.BadZipFile, EOFError) as exc:
        from storage.errors import IntegrityError

        raise IntegrityError(f"{what}: not a readable zip archive ({exc})") from None
    return ex.out


def _remove(path: Path) -> None:
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
