"""Content-addressed blobs: ``blobs/xxh3/<hex>``, one read-only inode per distinct content.

Committing a downloaded tree makes each of its files a hard link to the blob of its content, as
named by the manifest's xxh3 (computed by the engine while writing; nothing is re-read). When the
blob already exists the file is replaced by a link to it, so identical content is stored once.
A blob's link count is its reference count: 1 means only ``blobs/`` holds it (garbage).
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from cacheagent.layout import HEX, Layout, _crashpoint
from storage.errors import IntegrityError
from storage.hashing import READ_CHUNK, new_xxh3
from storage.manifest import Manifest
from storage.staging import fsync_dir

READ_ONLY = 0o444
COPY_CHUNK = 4 * READ_CHUNK


def commit_tree(layout: Layout, tree: Path, manifest: Manifest, *, durable: bool = True) -> None:
    """Make every file ``manifest`` lists under ``tree`` a hard link to its blob.

    Idempotent: rerunning it after a crash continues where it stopped. A file that shares its
    inode with something outside the store (a local source the engine hard-linked) is copied
    into the blob, verified against its xxh3, so the store never aliases a caller's file.
    """
    for entry in manifest.files:
        path = tree / entry.path
        blob = layout.blob(entry.xxh3_128)
        pst = path.lstat()
        bst = _stat(blob)
        if bst is not None and bst.st_size != entry.size:
            blob.unlink()  # a truncated or damaged blob must not absorb good content
            bst = None
        if bst is not None and os.path.samestat(pst, bst):
            continue
        if bst is None:
            _store(layout, path, pst, entry.xxh3_128, entry.size, blob)
            _crashpoint("commit")
        if not os.path.samestat(path.lstat(), blob.stat()):
            link_over(layout, blob, path)
    if durable:
        fsync_dir(layout.blobs)


def _store(layout: Layout, path: Path, pst: os.stat_result, digest: str, size: int, blob: Path) -> None:
    src = path
    tmp = None
    if pst.st_nlink > 1:
        tmp = src = layout.tmp / uuid.uuid4().hex
        copy_verified(path, tmp, digest, size)
    os.chmod(src, READ_ONLY)
    try:
        os.link(src, blob)
    except FileExistsError:
        pass  # another commit stored the same content first: link to that one
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def link_over(layout: Layout, blob: Path, path: Path) -> None:
    """Atomically replace ``path`` by a hard link to ``blob`` (via a temp link in ingest/.tmp)."""
    tmp = layout.tmp / uuid.uuid4().hex
    os.link(blob, tmp)
    os.replace(tmp, path)


def copy_verified(src: Path, dst: Path, digest: str, size: int) -> None:
    """Copy ``src`` to ``dst``, hashing while writing; IntegrityError unless it matches."""
    h = new_xxh3()
    n = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(COPY_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            n += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    if n != size or h.hexdigest() != digest:
        dst.unlink(missing_ok=True)
        raise IntegrityError(f"{src}: content does not match its manifest entry (size {n}, expected {size})")


def link_or_copy(src: Path, dst: Path, digest: str, size: int) -> bool:
    """Hard-link ``src`` to ``dst``, or copy it (verified) across filesystems. True when linked."""
    try:
        os.link(src, dst)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    copy_verified(src, dst, digest, size)
    shutil.copymode(src, dst)
    return False


@dataclass
class BlobInfo:
    digest: str
    size: int
    links: int


def inventory(layout: Layout) -> list[BlobInfo]:
    """Every blob with its size and link count (one stat each, no reads)."""
    out = []
    try:
        it = os.scandir(layout.blobs)
    except FileNotFoundError:
        return out
    with it:
        for e in it:
            if not HEX.match(e.name):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            out.append(BlobInfo(e.name, st.st_size, st.st_nlink))
    return out


def remove_unreferenced(layout: Layout, digests=None) -> tuple[list[str], int]:
    """Delete blobs whose link count is 1 (only blobs/ holds them). Caller holds the store lock."""
    removed, freed = [], 0
    candidates = inventory(layout) if digests is None else [b for d in digests if (b := _info(layout, d))]
    for b in candidates:
        if b.links == 1:
            try:
                (layout.blobs / b.digest).unlink()
            except FileNotFoundError:
                continue
            removed.append(b.digest)
            freed += b.size
    return removed, freed


def _info(layout: Layout, digest: str) -> BlobInfo | None:
    st = _stat(layout.blobs / digest)
    return None if st is None else BlobInfo(digest, st.st_size, st.st_nlink)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None
