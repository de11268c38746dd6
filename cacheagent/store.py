"""The node model store: ``ingest → commit → read → gc``, modelled on containerd's content store.

Contract:
- **ingest** — ``ensure(uri)`` downloads a model it does not hold into ``ingest/<key>`` through the
  storage engine, so a download is verified while written and resumes after a crash from the
  engine's staging. Until ingestion is complete, nothing of it is visible under ``models/``.
- **commit** — each file of the finished download becomes a hard link to
  ``blobs/xxh3/<hex>``, named by the xxh3 the engine computed while writing (never re-read).
  Content already held is linked, not stored again. The tree is then published as
  ``models/<key>`` by one rename: a model there is always complete and verified.
- **read** — ``materialize(uri_or_key, dest)`` publishes a model's files into DEST atomically,
  as hard links on the same filesystem and verified copies across filesystems. A hit does no
  network I/O. A model being read is never evicted.
- **gc** — a blob whose link count is 1 is referenced by no model and is deleted. Over capacity,
  unpinned models go least-recently-used first; pinned ones are never touched, and if they
  alone do not fit, the operation fails with CapacityError instead of thrashing.

``<key>`` is KServe's storageKey (first 16 hex chars of sha256 of the URI), so a pod can mount
``ROOT/models/<key>`` where KServe expects it. Identity is the digest: callers never choose a path.
A ``kill -9`` at any step leaves a store that ``fsck`` finds consistent or repairs.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import storage
from cacheagent import maintenance
from cacheagent.blobs import commit_tree, inventory, link_or_copy, remove_unreferenced
from cacheagent.layout import KEY, Layout, _crashpoint, key_for
from cacheagent.locks import Busy, FileLock, is_held
from cacheagent.state import ModelRecord, States, Usage
from storage.config import Settings, parse_size
from storage.errors import CapacityError, NotFoundError, StorageError
from storage.manifest import Manifest, read_manifest
from storage.progress import Progress, human_bytes
from storage.sources.base import redact_uri
from storage.staging import Staging, fsync_dir

__all__ = ["Store", "ModelRecord", "Usage", "key_for"]


class Store:
    def __init__(self, root: str | os.PathLike, capacity: int | str | None = None):
        self.layout = Layout(root)
        self.layout.create()
        self.root = self.layout.root
        self.capacity = None if capacity in (None, "") else parse_size(capacity)
        self.states = States(self.layout)

    # -- naming ----------------------------------------------------------------------------------
    def resolve(self, uri_or_key: str) -> str:
        """The key of a URI, or ``uri_or_key`` itself when it is the key of something held."""
        if KEY.match(uri_or_key) and uri_or_key in self.layout.keys_present():
            return uri_or_key
        return key_for(uri_or_key)

    # -- ingest + commit -------------------------------------------------------------------------
    def ensure(self, uri: str, *, env=None, pin: str | None = None, progress: Progress | None = None,
               include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
               concurrency: int | None = None, part_size: int | None = None) -> ModelRecord:
        """Hold ``uri`` in the store, published and verified; return its record.

        A hit touches last-use (and adds ``pin``) with no network I/O. A miss downloads through
        the engine, commits, publishes, then makes room (LRU eviction of unpinned models).
        Raises CapacityError when the model cannot fit beside the pinned ones (the pin this call
        added is withdrawn, nothing pinned is touched), or the engine's StorageError. After a
        failure, what was downloaded stays in ``ingest/`` for the next call to resume.
        """
        env = dict(os.environ if env is None else env)
        settings = Settings.from_env(env)
        include = sorted({*(include or []), *settings.allow_patterns})
        exclude = sorted({*(exclude or []), *settings.ignore_patterns})
        key = key_for(uri, include=include, exclude=exclude)
        self._ensure(key, uri, env=env, pin=pin, progress=progress, include=include, exclude=exclude,
                     concurrency=concurrency, part_size=part_size)
        return self.record(key)

    def _ensure(self, key: str, uri: str, *, env, pin=None, progress=None, include=(), exclude=(),
                concurrency=None, part_size=None) -> None:
        with FileLock(self.layout.key_lock(key)):
            if read_manifest(self.layout.model(key)) is not None:
                self.states.update(key, uri=uri, pin=pin, touch=True, durable=bool(pin))
                return
            prior = self.states.get(key)
            added_pin = bool(pin) and (prior is None or pin not in prior.pinned_by)
            self.states.update(key, uri=uri, include=include, exclude=exclude, pin=pin)
            try:
                self._ingest(key, uri, env, include, exclude, progress, concurrency, part_size)
                self.states.update(key, touch=True, durable=False)
                self._fit_new(key)
            except BaseException:
                if added_pin:
                    self.states.update(key, unpin=pin)
                raise

    def _ingest(self, key, uri, env, include, exclude, progress, concurrency, part_size) -> None:
        ingest = self.layout.ingesting(key)
        manifest = read_manifest(ingest)
        if manifest is None or storage.verify(ingest, full=False):
            self._precheck(key, uri, env, include, exclude)
            _crashpoint("download")
            # Durable whatever MODELDEPOT_FSYNC says: the store outlives pods and hands its blobs
            # to many of them by hard link, so a power loss must not tear one.
            manifest = storage.download(uri, ingest, include=include or None, exclude=exclude or None,
                                        concurrency=concurrency, part_size=part_size,
                                        env={**env, "MODELDEPOT_FSYNC": "1"}, progress=progress)
        _crashpoint("downloaded")
        self.commit(key, durable=True)
        _crashpoint("published")

    def commit(self, key: str, *, durable: bool = True) -> None:
        """Link ``ingest/<key>`` into blobs and publish it as ``models/<key>``. Caller holds the
        key lock; the store lock is held shared so gc cannot drop a blob being linked."""
        with FileLock(self.layout.store_lock, shared=True):
            self._commit_locked(key, durable=durable)

    def _commit_locked(self, key: str, *, durable: bool = True) -> None:
        ingest = self.layout.ingesting(key)
        manifest = read_manifest(ingest)
        if manifest is None:
            raise StorageError(f"{ingest}: no finished download to commit")
        commit_tree(self.layout, ingest, manifest, durable=durable)
        _crashpoint("linked")
        target = self.layout.model(key)
        if target.exists():
            self._trash(target)
        os.rename(ingest, target)
        if durable:
            fsync_dir(self.layout.models)
            fsync_dir(self.layout.ingest)

    # -- read ------------------------------------------------------------------------------------
    def materialize(self, uri_or_key: str, dest: str | os.PathLike) -> Manifest:
        """Publish a held model into DEST atomically (hard links, or verified copies across
        filesystems) with its manifest; DEST already holding it is left as is. No network I/O.
        Raises NotFoundError when the store does not hold it. Touches last-use."""
        key = self.resolve(uri_or_key)
        dest = Path(dest).absolute()
        with FileLock(self.layout.key_lock(key), shared=True):
            model = self.layout.model(key)
            manifest = read_manifest(model)
            if manifest is None:
                raise NotFoundError(f"{self.root}: model {key} is not in the store; ensure it first")
            if not _same_files(read_manifest(dest), manifest) or storage.verify(dest, full=False):
                self._publish_copy(model, manifest, dest)
            self.states.update(key, touch=True, durable=False)
        return manifest

    def _publish_copy(self, model: Path, manifest: Manifest, dest: Path) -> None:
        with Staging(dest, durable=Settings.from_env().fsync) as st:
            st.finish_interrupted_publish()
            shutil.rmtree(st.tree, ignore_errors=True)
            st.tree.mkdir(parents=True)
            for entry in manifest.files:
                target = st.tree / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(model / entry.path, target, entry.xxh3_128, entry.size)
            for link in model.rglob("*"):  # symlinks an archive carried
                if link.is_symlink():
                    target = st.tree / link.relative_to(model)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(os.readlink(link), target)
            st.publish(Manifest(source=manifest.source, files=manifest.files, revision=manifest.revision,
                                archive=manifest.archive, created=manifest.created))

    # -- pins ------------------------------------------------------------------------------------
    def pin(self, uri_or_key: str, owner: str) -> ModelRecord:
        """Keep a model from eviction while ``owner`` (a spec's name) references it. A URI not yet
        held may be pinned ahead of its download."""
        key = self._known_or_uri(uri_or_key)
        uri = None if key == uri_or_key else uri_or_key
        self.states.update(key, uri=uri, pin=owner)
        return self.record(key)

    def unpin(self, uri_or_key: str, owner: str) -> ModelRecord:
        key = self._known_or_uri(uri_or_key)
        entry = self.states.update(key, unpin=owner)
        if entry is None:
            raise NotFoundError(f"{self.root}: nothing is known of {redact_uri(uri_or_key)}")
        record = self.record(key)
        if record.state == "absent" and not record.pinned_by:
            self.states.remove(key)  # a pin ahead of a download that never came: forget it
        return record

    def _known_or_uri(self, uri_or_key: str) -> str:
        key = self.resolve(uri_or_key)
        if key != uri_or_key and KEY.match(uri_or_key) and self.states.get(key) is None:
            raise NotFoundError(f"{self.root}: no model has key {uri_or_key}; run `modeldepot cache ls`")
        return key

    # -- listing ---------------------------------------------------------------------------------
    def record(self, key: str) -> ModelRecord:
        entry = self.states.get(key)
        manifest = read_manifest(self.layout.model(key))
        if manifest is not None:
            state = "ready"
        elif self.layout.ingesting(key).exists() or self.layout.staging(key).exists():
            state = "ingesting" if is_held(self.layout.key_lock(key)) else "partial"
        else:
            state = "absent"
        uri = redact_uri(entry.uri) if entry else (manifest.source if manifest else "")
        return ModelRecord(
            key=key, uri=uri,
            bytes=manifest.total_bytes if manifest else None,
            files=len(manifest.files) if manifest else None,
            pinned_by=list(entry.pinned_by) if entry else [],
            last_used=entry.last_used if entry else None,
            state=state,
        )

    def list(self) -> list[ModelRecord]:
        return [self.record(k) for k in sorted(self.layout.keys_present())]

    def usage(self) -> Usage:
        blobs = inventory(self.layout)
        used = sum(b.size for b in blobs)
        if self.capacity is not None:
            available = max(0, self.capacity - used)
        else:
            available = shutil.disk_usage(self.root).free
        return Usage(used=used, capacity=self.capacity, available=available, blobs=len(blobs),
                     ingesting=_unshared_bytes(self.layout.ingest))

    # -- gc and capacity -------------------------------------------------------------------------
    def gc(self) -> maintenance.GcReport:
        """Delete blobs no model references, and debris of crashed commits and evictions."""
        with FileLock(self.layout.store_lock):
            return maintenance.collect(self)

    def evict(self, needed_bytes: int = 0) -> list[str]:
        """Evict unpinned models, least recently used first, until ``needed_bytes`` more fit under
        the capacity. Returns the keys evicted. Raises CapacityError when pinned models (and
        models in use) alone leave no room; then nothing is evicted."""
        return self._make_room(needed_bytes, protect=set())

    def _make_room(self, needed: int, protect: set[str]) -> list[str]:
        if self.capacity is None:
            return []
        with FileLock(self.layout.store_lock):
            remove_unreferenced(self.layout)
            blobs = {b.digest: b for b in inventory(self.layout)}
            used = sum(b.size for b in blobs.values())
            if used + needed <= self.capacity:
                return []
            with ExitStack() as held:
                evictable, fixed, links = [], set(), {}
                for key in sorted(p.name for p in self.layout.models.iterdir() if KEY.match(p.name)):
                    manifest = read_manifest(self.layout.model(key))
                    if manifest is None:
                        continue
                    for f in manifest.files:
                        links[f.xxh3_128] = links.get(f.xxh3_128, 0) + 1
                    entry = self.states.get(key)
                    if key not in protect and not (entry and entry.pinned_by):
                        try:
                            held.enter_context(FileLock(self.layout.key_lock(key), blocking=False))
                            evictable.append((entry.last_used if entry and entry.last_used else 0.0, key))
                            continue
                        except Busy:
                            pass  # being read or written right now: not evictable
                    fixed.update(f.xxh3_128 for f in manifest.files)
                # Links from outside models/ (a DEST materialized on this filesystem, a commit in
                # progress) keep a blob alive whatever is evicted: count it as kept.
                fixed.update(d for d, b in blobs.items() if b.links > 1 + links.get(d, 0))
                kept = sum(blobs[d].size for d in fixed if d in blobs)
                if kept + needed > self.capacity:
                    raise CapacityError(self._capacity_message(needed, kept))
                evicted = []
                for _, key in sorted(evictable):
                    if used + needed <= self.capacity:
                        break
                    used -= self._delete(key)
                    evicted.append(key)
                return evicted

    def _fit_new(self, key: str) -> None:
        """After committing ``key``: make room for it, or take it out again and say why."""
        try:
            self._make_room(0, protect={key})
        except CapacityError:
            with FileLock(self.layout.store_lock):
                self._delete(key)
            raise

    def _capacity_message(self, needed: int, kept: int) -> str:
        pins = sorted({o for k in self.layout.keys_present() if (e := self.states.get(k)) for o in e.pinned_by})
        extra = f" and {human_bytes(needed)} more is needed" if needed else ""
        return (f"{self.root}: capacity {human_bytes(self.capacity)} is exceeded: pinned or in-use models "
                f"(or copies linked outside the store) hold {human_bytes(kept)}{extra}; raise the storageLimit or unpin a model "
                f"(pinned by: {', '.join(pins) or 'nobody'})")

    def _delete(self, key: str) -> int:
        """Remove a published model and the blobs only it held; returns bytes freed. Caller holds
        the store lock and the key's lock."""
        model = self.layout.model(key)
        manifest = read_manifest(model)
        digests = {f.xxh3_128 for f in manifest.files} if manifest else set()
        if model.exists():
            self._trash(model)
        entry = self.states.get(key)
        if entry is not None and not entry.pinned_by:
            self.states.remove(key)
        return remove_unreferenced(self.layout, digests)[1]

    def _trash(self, path: Path) -> None:
        gone = self.layout.trash / f"{path.name}.{uuid.uuid4().hex[:8]}"
        os.rename(path, gone)
        _crashpoint("evict")
        shutil.rmtree(gone)

    def _precheck(self, key: str, uri: str, env, include, exclude) -> None:
        """Before downloading: make room for the listed size, less content already held."""
        if self.capacity is None:
            return
        needed = maintenance.listed_new_bytes(self, uri, env, include, exclude)
        if needed is not None:
            self._make_room(needed, protect={key})

    # -- checks ----------------------------------------------------------------------------------
    def verify(self, key: str | None = None, *, full: bool = True) -> list[str]:
        """Problems with published models (one, or all): each line starts with the key."""
        return [p.line for p in self.problems(key, full=full)]

    def problems(self, key: str | None = None, *, full: bool = True) -> list[maintenance.Problem]:
        """What ``verify`` prints, as records ``repair`` acts on."""
        return maintenance.problems(self, None if key is None else self.resolve(key), full=full)

    def repair(self, problems: list[maintenance.Problem], *, refetch: bool = False,
               env=None) -> maintenance.RepairReport:
        """Unpublish the models ``problems`` (from ``problems()``) found damaged, without their
        damaged files, so the next ensure re-fetches only those; skip models in use. With
        ``refetch``, ensure them again at once with ``env`` (default: this process's)."""
        return maintenance.repair(self, problems, refetch=refetch, env=env)

    def scrub(self, *, env=None) -> maintenance.ScrubReport:
        """Re-hash every blob; a corrupted one is removed and its models re-fetched from source."""
        return maintenance.scrub(self, env=env)

    def fsck(self, repair: bool = True) -> maintenance.FsckReport:
        """Check the store's structure after a crash and (by default) repair it."""
        return maintenance.fsck(self, repair=repair)


def _same_files(a: Manifest | None, b: Manifest) -> bool:
    if a is None:
        return False
    return {(f.path, f.size, f.xxh3_128) for f in a.files} == {(f.path, f.size, f.xxh3_128) for f in b.files}


def _unshared_bytes(root: Path) -> int:
    """Bytes of files under ``root`` not yet linked into blobs (downloads in progress)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if st.st_nlink == 1:
                total += st.st_size
    return total

