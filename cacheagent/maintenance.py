"""Checking and repairing the store: verify (read-only), repair (what verify found), scrub (re-hash,
re-fetch), fsck (structure after a crash), collect (gc), and the listing-size estimate used before a
download.

Every repair keeps the store's one invariant: a model under ``models/`` is complete, each of its
files a hard link to the blob its manifest names. A model that cannot be repaired in place is
unpublished back to ``ingest/<key>`` without its damaged files, so the next ensure re-fetches only
those (the engine links the rest from there).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from cacheagent.blobs import READ_ONLY, inventory, link_over, remove_unreferenced
from cacheagent.layout import HEX, KEY
from cacheagent.locks import Busy, FileLock
from cacheagent.state import Entry
from storage.errors import StorageError
from storage.hashing import xxh3_file
from storage.manifest import META_DIR, Manifest, read_manifest

if TYPE_CHECKING:
    from cacheagent.store import Store


class _Report:
    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GcReport(_Report):
    removed_blobs: int = 0
    freed_bytes: int = 0
    debris: list[str] = field(default_factory=list)


@dataclass
class ScrubReport(_Report):
    blobs: int = 0
    bytes: int = 0
    seconds: float = 0.0
    corrupt: list[str] = field(default_factory=list)  # blob digests that did not match their name
    refetched: list[str] = field(default_factory=list)  # keys re-fetched from their source
    failed: dict[str, str] = field(default_factory=dict)  # key -> why the re-fetch failed

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class RepairReport(_Report):
    unpublished: dict[str, list[str]] = field(default_factory=dict)  # key -> files dropped (to re-fetch)
    discarded: list[str] = field(default_factory=list)  # models/<key> with no readable manifest, removed
    removed_blobs: list[str] = field(default_factory=list)  # corrupt blobs deleted
    removed_files: list[str] = field(default_factory=list)  # "<key>/<path>" not in its manifest, deleted
    skipped: list[str] = field(default_factory=list)  # keys being read or written right now: try again
    found: list[Problem] = field(default_factory=list)  # the problems confirmed under the locks
    refetched: list[str] = field(default_factory=list)  # keys re-fetched (when asked to)
    failed: dict[str, str] = field(default_factory=dict)  # key -> why its re-fetch failed

    @property
    def taken_out(self) -> list[str]:
        """Keys no longer published because of this repair: what the next ensure must fetch."""
        return sorted({*self.unpublished, *self.discarded})

    def to_dict(self) -> dict:
        return {**asdict(self), "found": [p.line for p in self.found]}


@dataclass
class FsckReport(_Report):
    problems: list[str] = field(default_factory=list)  # found and not repaired
    repaired: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # resumable downloads: consistent, not problems
    skipped: list[str] = field(default_factory=list)  # keys another process holds right now

    @property
    def consistent(self) -> bool:
        return not self.problems

    def found(self, message: str, fix, repair: bool) -> None:
        if not repair:
            self.problems.append(message)
            return
        try:
            fix()
        except (OSError, StorageError) as exc:
            self.problems.append(f"{message} (repair failed: {exc})")
        else:
            self.repaired.append(message)


# -- gc ------------------------------------------------------------------------------------------
def collect(store: Store) -> GcReport:
    """Caller holds the store lock: no commit is linking, so temp files and trash are debris."""
    layout = store.layout
    report = GcReport()
    for d in (layout.tmp, layout.trash):
        for p in sorted(d.iterdir()):
            report.debris.append(str(p.relative_to(layout.root)))
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    removed, freed = remove_unreferenced(layout)
    report.removed_blobs, report.freed_bytes = len(removed), freed
    return report


# -- verify --------------------------------------------------------------------------------------
# What verify can find wrong with a published model's file (kind), and which of those mean the file
# must be fetched again (DAMAGED) rather than removed in place (EXTRA) or the model dropped whole.
MISSING, SIZE, NO_BLOB, NOT_LINKED, CORRUPT = "missing", "size", "no-blob", "not-linked", "corrupt"
EXTRA, UNREADABLE = "extra", "unreadable"
DAMAGED = frozenset({MISSING, SIZE, NO_BLOB, NOT_LINKED, CORRUPT})


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a published model; ``line`` is how verify prints it (key first)."""

    key: str
    kind: str
    path: str = ""  # the file, relative to the model ("" for the model as a whole)
    detail: str = ""
    digest: str = ""  # the manifest's xxh3 of the file
    file_id: tuple[int, int, int] | None = None  # CORRUPT: the file that failed its hash (see _file_id)

    @property
    def line(self) -> str:
        return f"{self.key}: {self.path}: {self.detail}" if self.path else f"{self.key}: {self.detail}"

    def __str__(self) -> str:
        return self.line


def published(store: Store) -> list[str]:
    return sorted(p.name for p in store.layout.models.iterdir() if KEY.match(p.name))


def _corrupt(key: str, path: str, digest: str, file_id: tuple[int, int, int]) -> Problem:
    return Problem(key, CORRUPT, path, f"content does not match its xxh3 (blob {digest} is corrupt)", digest, file_id)


def model_problems(store: Store, key: str, *, full: bool, hashed: dict[str, str] | None = None) -> list[Problem]:
    layout = store.layout
    model = layout.model(key)
    manifest = read_manifest(model)
    if manifest is None:
        return [Problem(key, UNREADABLE, detail="not published (no readable manifest)")]
    hashed = {} if hashed is None else hashed
    problems = []
    for e in manifest.files:
        path, blob = model / e.path, layout.blobs / e.xxh3_128
        try:
            pst = path.lstat()
        except FileNotFoundError:
            problems.append(Problem(key, MISSING, e.path, "missing", e.xxh3_128))
            continue
        if pst.st_size != e.size:
            problems.append(Problem(key, SIZE, e.path, f"size {pst.st_size} != {e.size} in the manifest", e.xxh3_128))
            continue
        try:
            bst = blob.stat()
        except FileNotFoundError:
            problems.append(Problem(key, NO_BLOB, e.path, f"its blob {e.xxh3_128} is missing", e.xxh3_128))
            continue
        if not os.path.samestat(pst, bst):
            problems.append(Problem(key, NOT_LINKED, e.path, f"not a link to its blob {e.xxh3_128}", e.xxh3_128))
            continue
        if full:
            if e.xxh3_128 not in hashed:
                hashed[e.xxh3_128] = xxh3_file(blob)
            if hashed[e.xxh3_128] != e.xxh3_128:
                problems.append(_corrupt(key, e.path, e.xxh3_128, _file_id(bst)))
    listed = {e.path for e in manifest.files}
    for p in sorted(model.rglob("*")):
        rel = p.relative_to(model).as_posix()
        if rel == META_DIR or rel.startswith(META_DIR + "/") or p.is_dir() or p.is_symlink():
            continue
        if rel not in listed:
            problems.append(Problem(key, EXTRA, rel, "not in the manifest"))
    return problems


def problems(store: Store, key: str | None, *, full: bool) -> list[Problem]:
    hashed: dict[str, str] = {}
    keys = [key] if key is not None else published(store)
    return [p for k in keys for p in model_problems(store, k, full=full, hashed=hashed)]


def verify(store: Store, key: str | None, *, full: bool) -> list[str]:
    return [p.line for p in problems(store, key, full=full)]


# -- repair --------------------------------------------------------------------------------------
def repair(store: Store, found: list[Problem], *, refetch: bool = False, env=None) -> RepairReport:
    """Make the models ``found`` names whole again, or take them out of ``models/``.

    A damaged file (corrupt, missing, wrong size, not a link to its blob, blob gone) cannot be
    mended in place: its model is unpublished back to ``ingest/<key>`` without the damaged files, so
    the next ensure re-fetches only those. A corrupt blob is deleted, and every model linking it is
    unpublished too, so no re-fetch or later download is linked to it again. A file the manifest
    does not list is deleted in place; a ``models/<key>`` with no readable manifest is removed.

    ``found`` may be stale (a verify pass takes minutes; the models are not locked meanwhile), so
    under the locks each model's links and sizes are checked again and a corrupt file is recognised
    by its identity (``_file_id``): a model repaired or replaced since is left alone.
    Holds the store lock and only tries key locks (locks.py): a model being read or downloaded
    right now is left as it is and listed in ``skipped``, to be tried again later.

    With ``refetch`` the models taken out are then fetched again with ``env`` (default: this
    process's environment), as scrub does; without it the caller (the agent's reconcile loop,
    which knows each model's credentials, or a later ``ensure``) does it.
    """
    layout = store.layout
    report = RepairReport()
    corrupt = {p.digest: p.file_id for p in found if p.kind == CORRUPT and p.file_id}
    by_key: dict[str, list[Problem]] = {}
    for p in found:
        by_key.setdefault(p.key, []).append(p)
    with FileLock(layout.store_lock), ExitStack() as held:
        keys = set(by_key)
        if corrupt:  # under the store lock no commit can link a corrupt blob into one more model
            refs = references(store)
            keys |= {k for d in corrupt for k in refs.get(d, ())}
        for key in sorted(keys):
            try:
                held.enter_context(FileLock(layout.key_lock(key), blocking=False))
            except Busy:
                report.skipped.append(key)
                continue
            _repair_model(store, key, corrupt, by_key.get(key, []), report)
        for digest, file_id in sorted(corrupt.items()):
            blob = layout.blobs / digest
            if _file_id(blob) == file_id:
                blob.unlink()
                report.removed_blobs.append(digest)
    if refetch:
        report.refetched, report.failed = refetch_models(store, report.taken_out, env=env)
    return report


def _repair_model(store: Store, key: str, corrupt: dict, reported: list[Problem], report: RepairReport) -> None:
    """Caller holds the store lock and ``key``'s lock."""
    model = store.layout.model(key)
    manifest = read_manifest(model)
    if manifest is None:
        if model.is_dir():  # publishing is one rename of a tree with its manifest: this is debris
            store._trash(model)
            report.discarded.append(key)
            report.found.append(Problem(key, UNREADABLE, detail="not published (no readable manifest)"))
        return
    # A file still the one that failed its hash is corrupt, whatever else is now wrong with it (once
    # its blob is deleted, a model skipped while in use also reads as "blob missing").
    was = {p.path: p for p in reported if p.kind == CORRUPT}
    damaged: dict[str, Problem] = {}
    for e in manifest.files:
        file_id = corrupt.get(e.xxh3_128)
        if file_id and _file_id(model / e.path) == file_id:
            damaged[e.path] = was.get(e.path) or _corrupt(key, e.path, e.xxh3_128, file_id)
    now = model_problems(store, key, full=False)
    for p in now:
        if p.kind in DAMAGED:
            damaged.setdefault(p.path, p)
    for p in now:
        if p.kind == EXTRA:
            (model / p.path).unlink(missing_ok=True)
            report.removed_files.append(f"{key}/{p.path}")
            report.found.append(p)
    if damaged:
        unpublish(store, key, bad_paths=set(damaged))
        report.unpublished[key] = sorted(damaged)
        report.found.extend(damaged[path] for path in sorted(damaged))


def _file_id(path_or_stat) -> tuple[int, int, int] | None:
    """Which file this is, without reading it: device, inode and mtime. An inode number freed by
    a deleted blob is soon reused, but by a file written later (the store writes every blob itself
    and never sets mtimes), so the three together name one content. A write to the file after the
    hash changes its mtime too: the model then counts as changed, and the next pass looks again."""
    if isinstance(path_or_stat, os.stat_result):
        st = path_or_stat
    else:
        try:
            st = path_or_stat.lstat()
        except FileNotFoundError:
            return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def refetch_models(store: Store, keys, *, env=None) -> tuple[list[str], dict[str, str]]:
    """Ensure each key again from the source URI and filters its state record names, with ``env``
    (default: this process's environment). Returns (re-fetched keys, key -> why it failed)."""
    env = dict(os.environ if env is None else env)
    # The record's own filters apply, not the caller's: they are part of what the key names.
    env = {k: v for k, v in env.items() if k not in ("STORAGE_ALLOW_PATTERNS", "STORAGE_IGNORE_PATTERNS")}
    done, failed = [], {}
    for key in keys:
        entry = store.states.get(key)
        if entry is None:
            failed[key] = "no state record names its source URI"
            continue
        try:
            store._ensure(key, entry.uri, env=env, include=entry.include, exclude=entry.exclude)
            done.append(key)
        except StorageError as exc:
            failed[key] = str(exc)
    return done, failed


# -- scrub ---------------------------------------------------------------------------------------
def references(store: Store) -> dict[str, set[str]]:
    """digest -> keys of the published models whose manifest names it."""
    refs: dict[str, set[str]] = {}
    for key in published(store):
        manifest = read_manifest(store.layout.model(key))
        for e in manifest.files if manifest else []:
            refs.setdefault(e.xxh3_128, set()).add(key)
    return refs


def scrub(store: Store, *, env=None) -> ScrubReport:
    layout = store.layout
    report = ScrubReport()
    t0 = time.monotonic()
    for b in inventory(layout):
        try:
            digest = xxh3_file(layout.blobs / b.digest)
        except FileNotFoundError:
            continue  # gc'd meanwhile
        report.blobs += 1
        report.bytes += b.size
        if digest != b.digest:
            report.corrupt.append(b.digest)
    report.seconds = time.monotonic() - t0
    if not report.corrupt:
        return report
    bad = set(report.corrupt)
    refs = references(store)
    affected = sorted({k for d in bad for k in refs.get(d, ())})
    with ExitStack() as held:
        for key in affected:  # sorted, blocking, before the store lock: see locks.py
            held.enter_context(FileLock(layout.key_lock(key)))
        with FileLock(layout.store_lock):
            for key in affected:
                unpublish(store, key, bad)
            for d in bad:
                (layout.blobs / d).unlink(missing_ok=True)
    report.refetched, report.failed = refetch_models(store, affected, env=env)
    return report


def unpublish(store: Store, key: str, bad_digests: set[str] | None = None, bad_paths: set[str] = frozenset()) -> None:
    """Move ``models/<key>`` back to ``ingest/<key>`` without the damaged files. Caller holds the
    key lock and the store lock."""
    layout = store.layout
    model, ingest = layout.model(key), layout.ingesting(key)
    manifest = read_manifest(model)
    if ingest.exists():
        store._trash(ingest)
    os.rename(model, ingest)
    for e in manifest.files if manifest else []:
        if e.path in bad_paths or (bad_digests and e.xxh3_128 in bad_digests):
            (ingest / e.path).unlink(missing_ok=True)


# -- fsck ----------------------------------------------------------------------------------------
def fsck(store: Store, *, repair: bool) -> FsckReport:
    layout = store.layout
    report = FsckReport()
    with FileLock(layout.store_lock):
        for d in (layout.tmp, layout.trash):
            for p in sorted(d.iterdir()):
                report.found(f"{p.relative_to(layout.root)}: left by an interrupted commit or eviction",
                             lambda p=p: shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(),
                             repair)
        for key in sorted(layout.keys_present()):
            try:
                with FileLock(layout.key_lock(key), blocking=False):
                    _fsck_key(store, key, report, repair)
            except Busy:
                report.skipped.append(key)
        _fsck_state_debris(store, report, repair)
        _fsck_blobs(store, report, repair)
    return report


def _fsck_key(store: Store, key: str, report: FsckReport, repair: bool) -> None:
    layout = store.layout
    model, ingest = layout.model(key), layout.ingesting(key)
    manifest = read_manifest(model) if model.is_dir() else None
    if model.exists() and manifest is None:
        report.found(f"models/{key}: has no manifest, so it is not a published model",
                     lambda: store._trash(model), repair)
    if manifest is not None:
        _fsck_model(store, key, manifest, report, repair)
        manifest = read_manifest(model)  # None when repair unpublished it
    if ingest.is_dir() and manifest is not None:
        report.found(f"ingest/{key}: stale copy of a published model", lambda: store._trash(ingest), repair)
    elif ingest.is_dir():
        import storage

        if read_manifest(ingest) is not None and not storage.verify(ingest, full=False):
            report.found(f"ingest/{key}: downloaded but not committed; committing it",
                         lambda: store._commit_locked(key), repair)
        else:
            report.pending.append(f"ingest/{key}: incomplete; the next ensure resumes it")
    if layout.staging(key).exists():
        report.pending.append(f"ingest/{layout.staging(key).name}: a download's staging; the next ensure resumes it")
    lock = layout.engine_lock(key)
    if lock.exists():
        report.found(f"ingest/{lock.name}: download lock left by a killed process",
                     lambda: lock.unlink(missing_ok=True), repair)
    entry = store.states.get(key)
    present = model.exists() or ingest.exists() or layout.staging(key).exists()
    if entry is None and model.exists():
        source = read_manifest(model).source
        report.found(f"state/models/{key}.json: missing for a published model; recreated from its manifest",
                     lambda: store.states.put(key, Entry(uri=source)), repair)
    elif entry is not None and not present and not entry.pinned_by:
        report.found(f"state/models/{key}.json: names nothing held or pinned", lambda: store.states.remove(key), repair)


def _fsck_model(store: Store, key: str, manifest: Manifest, report: FsckReport, repair: bool) -> None:
    """Relink files whose blob link was lost; unpublish the model when content is missing."""
    layout = store.layout
    model = layout.model(key)
    broken: set[str] = set()
    for e in manifest.files:
        path, blob = model / e.path, layout.blobs / e.xxh3_128
        try:
            pst = path.lstat()
        except FileNotFoundError:
            broken.add(e.path)
            continue
        if pst.st_size != e.size or not path.is_file():
            broken.add(e.path)
            continue
        try:
            if os.path.samestat(pst, blob.stat()):
                continue
            blob_exists = True
        except FileNotFoundError:
            blob_exists = False
        if xxh3_file(path) != e.xxh3_128:
            broken.add(e.path)
        elif blob_exists:
            report.found(f"models/{key}/{e.path}: a copy, not a link to its blob; relinking",
                         lambda b=blob, p=path: link_over(layout, b, p), repair)
        else:
            def restore(p=path, b=blob):
                os.chmod(p, READ_ONLY)
                os.link(p, b)
            report.found(f"blobs/xxh3/{e.xxh3_128}: missing for models/{key}/{e.path}; restored from it",
                         restore, repair)
    listed = {e.path for e in manifest.files}
    for p in sorted(model.rglob("*")):
        rel = p.relative_to(model).as_posix()
        if rel == META_DIR or rel.startswith(META_DIR + "/") or p.is_dir() or p.is_symlink():
            continue
        if rel not in listed:
            report.found(f"models/{key}/{rel}: not in its manifest; removed", lambda p=p: p.unlink(), repair)
    if broken:
        report.found(f"models/{key}: {len(broken)} file(s) missing or damaged ({', '.join(sorted(broken)[:3])}); "
                     "unpublished so the next ensure re-fetches them",
                     lambda: unpublish(store, key, bad_paths=broken), repair)


def _fsck_state_debris(store: Store, report: FsckReport, repair: bool) -> None:
    for p in sorted(store.layout.state.glob(".*.tmp")):
        key = p.name.split(".")[1]
        try:
            with FileLock(store.layout.state_lock(key), blocking=False):
                report.found(f"state/models/{p.name}: half-written record", lambda p=p: p.unlink(missing_ok=True),
                             repair)
        except Busy:
            pass


def _fsck_blobs(store: Store, report: FsckReport, repair: bool) -> None:
    layout = store.layout
    for p in sorted(layout.blobs.iterdir()):
        if not HEX.match(p.name) or not p.is_file() or p.is_symlink():
            report.found(f"blobs/xxh3/{p.name}: not a blob", lambda p=p: _remove(p), repair)
            continue
        st = p.stat()
        if st.st_nlink == 1:
            report.found(f"blobs/xxh3/{p.name}: referenced by no model", lambda p=p: p.unlink(), repair)
        elif st.st_mode & 0o222:
            report.found(f"blobs/xxh3/{p.name}: writable", lambda p=p: os.chmod(p, READ_ONLY), repair)


def _remove(p) -> None:
    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


# -- capacity estimate ---------------------------------------------------------------------------
def listed_new_bytes(store: Store, uri: str, env, include, exclude) -> int | None:
    """Bytes a download of ``uri`` would add: the listed sizes, less files whose source identity
    (etag, version, checksum) and size match a file the store already holds. None when unknown
    (listing failed or a size is not listed); the check after commit still applies then."""
    from storage.engine import _source_identity, select
    from storage.sources import open_source

    try:
        source = open_source(uri, env)
        try:
            files = select(source.list().files, include or [], exclude or [])
        finally:
            source.close()
    except StorageError:
        return None
    if any(f.size is None for f in files):
        return None
    held = set()
    for key in published(store):
        manifest = read_manifest(store.layout.model(key))
        for e in manifest.files if manifest else []:
            if e.source:
                held.add((e.size, json.dumps(e.source, sort_keys=True)))
    return sum(f.size for f in files
               if not (_source_identity(f) and (f.size, json.dumps(_source_identity(f), sort_keys=True)) in held))
