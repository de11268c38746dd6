"""Where a download is built before it is published, and how it is published.

Contract: until ``publish`` returns, nothing of a download is visible at DEST (or, when DEST
already held a published tree, DEST still holds that tree, whole). A crash leaves only the
staging directory, which the next run of the same download resumes from.

Staging lives on DEST's filesystem so publishing is a rename:
- normally a hidden sibling ``<parent>/.<name>.modeldepot-staging/``; publish renames its tree
  onto DEST (an empty or missing DEST), or swaps it with a previously published DEST atomically;
- when DEST is a mount point (an init container's ``/mnt/models`` emptyDir) or its parent is
  not writable, inside DEST at ``DEST/.modeldepot/staging/``; publish then moves the entries in
  and writes the manifest last, with a journal so a crash mid-publish rolls forward on rerun.

Layout: ``lock`` (held for the whole download), ``journal`` (JSON lines: parts and files done),
``tree/`` (the tree to publish), ``layers/`` (archive and image layers being extracted),
``PUBLISHING`` (present while a publish is under way).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

from storage.errors import DestinationError
from storage.manifest import BOOT_ID, META_DIR, Manifest, manifest_path, read_manifest, write_manifest

log = logging.getLogger("modeldepot")


class Staging:
    def __init__(self, dest: Path, *, durable: bool = True):
        self.dest = dest
        self.durable = durable
        parent = dest.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DestinationError(f"{dest}: cannot create its parent directory ({exc.strerror})") from None
        if dest.exists() and not dest.is_dir():
            raise DestinationError(f"{dest}: exists and is not a directory; choose a directory path for DEST")
        self.inside = dest.exists() and (os.path.ismount(dest) or not os.access(parent, os.W_OK))
        if self.inside:
            self.root = dest / META_DIR / "staging"
            self.lock_path = dest / META_DIR / "lock"
        else:
            self.root = parent / f".{dest.name}.modeldepot-staging"
            self.lock_path = parent / f".{dest.name}.modeldepot-lock"
        self.tree = self.root / "tree"
        self.layers = self.root / "layers"
        self.journal_path = self.root / "journal"
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Staging:
        self._lock_fd = self._acquire_lock()
        self.tree.mkdir(parents=True, exist_ok=True)
        self.layers.mkdir(parents=True, exist_ok=True)
        self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def _acquire_lock(self) -> int:
        """flock the lock file. Its holder deletes it on exit so nothing is left beside DEST; a
        waiter that wakes up holding a deleted file's lock retries on the current one."""
        waited = False
        while True:
            try:
                self.lock_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise DestinationError(f"{self.dest}: cannot write next to DEST ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    log.info("%s: another modeldepot is writing this destination; waiting for it", self.dest)
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def __exit__(self, *exc) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        if self._lock_fd is not None:
            try:
                os.unlink(self.lock_path)
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        if self.inside:
            try:
                self.root.parent.rmdir() if not any(self.root.parent.iterdir()) else None
            except OSError:
                pass

    def discard(self) -> None:
        """Remove all staging debris (after a failure whose partial data must not be resumed)."""
        shutil.rmtree(self.root, ignore_errors=True)

    # -- journal ---------------------------------------------------------------------------------
    def record(self, **event) -> None:
        # One write(2) per line with O_APPEND: a kill -9 leaves whole lines or none; a torn last
        # line after a power loss is skipped by ``events``.
        os.write(self._journal_fd, (json.dumps(event, separators=(",", ":")) + "\n").encode())

    def events(self) -> list[dict]:
        try:
            lines = self.journal_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def reset_journal(self, events: list[dict]) -> None:
        """Rewrite the journal keeping only ``events`` (drops entries for files no longer planned)."""
        tmp = self.root / "journal.tmp"
        tmp.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
        os.replace(tmp, self.journal_path)
        os.close(self._journal_fd)
        self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    # -- publish ---------------------------------------------------------------------------------
    def finish_interrupted_publish(self) -> bool:
        """Roll a publish that a crash interrupted forward. True when one was completed."""
        marker = self.root / "PUBLISHING"
        if not marker.exists():
            return False
        wanted = marker.read_text()
        current = read_manifest(self.dest)
        if current is not None and current.to_json() == wanted:
            self.discard()
            return True
        manifest = Manifest.from_json(wanted)
        if self.inside or self._is_foreign(self.dest):
            self._move_entries_in(manifest)
        else:
            self._publish_by_rename(manifest)
        return True

    def publish(self, manifest: Manifest) -> None:
        """Make ``tree`` the content of DEST, the manifest last. Removes staging on success.
        Without durability the manifest records this boot, so a later boot re-hashes DEST."""
        manifest.unsynced_boot = None if self.durable else BOOT_ID
        write_manifest(self.tree, manifest, durable=self.durable)
        if self.durable:
            _fsync_dirs(self.tree)
        marker = self.root / "PUBLISHING"
        marker.write_text(manifest.to_json())
        if self.inside or self._is_foreign(self.dest):
            self._move_entries_in(manifest)
        else:
            self._publish_by_rename(manifest)

    @staticmethod
    def _is_foreign(dest: Path) -> bool:
        """DEST holds files modeldepot did not publish: merge into it instead of replacing it."""
        if not dest.is_dir():
            return False
        if manifest_path(dest).exists():
            return False
        return any(p.name not in (META_DIR,) for p in dest.iterdir())

    def _publish_by_rename(self, manifest: Manifest) -> None:
        dest = self.dest
        if dest.exists() and any(dest.iterdir()):
            if not _exchange(self.tree, dest):
                old = self.root / "old"
                shutil.rmtree(old, ignore_errors=True)
                os.rename(dest, old)
                os.rename(self.tree, dest)
        else:
            if dest.exists():
                dest.rmdir()  # empty: rename(2) would replace it, but rmdir keeps this portable
            os.rename(self.tree, dest)
        if self.durable:
            fsync_dir(dest.parent)
        self.discard()

    def _move_entries_in(self, manifest: Manifest) -> None:
        dest = self.dest
        old = read_manifest(dest)
        mpath = manifest_path(dest)
        if mpath.exists():
            mpath.unlink()  # from here on DEST reads as incomplete until the new manifest lands
        keep = {f.path for f in manifest.files}
        if old is not None:
            for entry in old.files:
                if entry.path not in keep:
                    (dest / entry.path).unlink(missing_ok=True)
        for child in sorted(self.tree.iterdir()):
            if child.name == META_DIR:
                continue
            target = dest / child.name
            if target.is_dir() and not target.is_symlink() and child.is_dir():
                _merge_dir(child, target)
                continue
            _remove(target)
            os.rename(child, target)
        mpath.parent.mkdir(parents=True, exist_ok=True)
        os.replace(manifest_path(self.tree), mpath)
        if self.durable:
            fsync_dir(mpath.parent)
            fsync_dir(dest)
        self.discard()


def _merge_dir(src: Path, dst: Path) -> None:
    for child in sorted(src.iterdir()):
        target = dst / child.name
        if child.is_dir() and not child.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge_dir(child, target)
        else:
            _remove(target)
            os.rename(child, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


_RENAME_EXCHANGE = 2
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def fsync_dir(path: Path) -> None:
    """fsync a directory so renames and new entries in it survive a power loss."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dirs(tree: Path) -> None:
    for dirpath, _dirs, _files in os.walk(tree):
        fsync_dir(Path(dirpath))
