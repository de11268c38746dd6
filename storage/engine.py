"""``download(uri, dest)``: URI → Source → plan → transfer into staging → verify → publish.

Guarantees (see DESIGN.md): on success DEST holds exactly the planned files, each checked for
size and, where the source offers one, its checksum, with ``DEST/.modeldepot/manifest.json``
written last. On failure DEST is absent or unchanged; what was already received stays in staging
for the next run to resume (unless it failed verification, in which case it is dropped). A rerun
of a completed download lists the source and transfers nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from storage.archive import archive_kind, extract_tar, extract_zip
from storage.config import Settings
from storage.errors import BadURIError, IntegrityError, NotFoundError, StorageError, UnsafeArchiveError
from storage.hashing import checker_value, new_checker, xxh3_file
from storage.manifest import BOOT_ID, FileEntry, Manifest, manifest_path, read_manifest, write_manifest
from storage.progress import NullProgress, Progress
from storage.sources import open_source
from storage.sources.base import RemoteFile, Source, redact_uri
from storage.staging import Staging, fsync_dir
from storage.storageconfig import apply_storage_config, uri_with_bucket
from storage.transfer import FileJob, Runner, call_with_retries, resilient_stream

log = logging.getLogger("modeldepot")


def download(
    uri: str,
    dest: str | os.PathLike,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    concurrency: int | None = None,
    part_size: int | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Download ``uri`` into ``dest`` and return its manifest.

    ``include``/``exclude`` are globs on paths relative to DEST (``*`` crosses ``/``);
    KServe's STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS from ``env`` add to them. ``env``
    (default: the process environment) supplies credentials and tunables (storage.config).
    Raises a ``storage.errors.StorageError`` subclass; its message is one line naming the URI.
    """
    env = dict(os.environ if env is None else env)
    if not uri or not str(uri).strip():
        raise BadURIError("empty source URI; pass something like s3://bucket/model")
    # KServe's STORAGE_CONFIG / STORAGE_OVERRIDE_CONFIG become the variables each source reads.
    env = apply_storage_config(uri, env)
    uri = uri_with_bucket(uri, env)
    if dest is None or not str(dest).strip():
        raise BadURIError(f"{redact_uri(uri)}: empty destination path")
    settings = Settings.from_env(env)
    overrides = {}
    if concurrency is not None:
        if concurrency < 1:
            raise BadURIError(f"concurrency {concurrency} must be at least 1")
        overrides["concurrency"] = concurrency
    if part_size is not None:
        if part_size < 1:
            raise BadURIError(f"part size {part_size} must be at least 1 byte")
        overrides["part_size"] = part_size
    settings = dataclasses.replace(settings, **overrides)
    include = list(include or []) + list(settings.allow_patterns)
    exclude = list(exclude or []) + list(settings.ignore_patterns)

    source = open_source(uri, env)
    secrets = _secrets(source, env)
    progress = progress or NullProgress(source.describe())
    try:
        return _Download(source, Path(dest).absolute(), include, exclude, settings, progress).run()
    except StorageError as exc:
        raise _scrubbed(exc, secrets) from None
    finally:
        source.close()


def _secrets(source: Source, env: Mapping[str, str]) -> list[str]:
    found = list(getattr(source, "secrets", lambda: [])())
    for key, value in env.items():
        k = key.upper()
        if value and len(value) >= 6 and any(s in k for s in ("SECRET", "TOKEN", "PASSWORD", "ACCESS_KEY", "SAS")):
            if k != "AWS_ACCESS_KEY_ID":
                found.append(value)
        if key.endswith("-headers") and value:
            try:
                found.extend(str(v) for v in json.loads(value).values() if len(str(v)) >= 6)
            except (ValueError, AttributeError):
                pass
    return found


def _scrubbed(exc: StorageError, secrets: list[str]) -> StorageError:
    message = str(exc)
    clean = message
    for secret in secrets:
        clean = clean.replace(secret, "***")
    if clean == message:
        return exc
    return type(exc)(clean)


def _source_identity(remote: RemoteFile) -> dict:
    ident = {"etag": remote.etag, "version": remote.version, **remote.checksums}
    return {k: v for k, v in ident.items() if v}


def _ident_hash(remote: RemoteFile) -> str:
    doc = {"path": remote.path, "size": remote.size, "unpack": remote.unpack, **_source_identity(remote)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def select(files: list[RemoteFile], include: Sequence[str], exclude: Sequence[str]) -> list[RemoteFile]:
    """Files whose relative path matches an include glob (when any) and no exclude glob."""
    out = []
    for f in files:
        if f.unpack:  # layers and archives are filtered by content, not by name
            out.append(f)
            continue
        if include and not any(fnmatch.fnmatchcase(f.path, g) for g in include):
            continue
        if any(fnmatch.fnmatchcase(f.path, g) for g in exclude):
            continue
        out.append(f)
    return out


class _Download:
    def __init__(self, source: Source, dest: Path, include, exclude, settings: Settings, progress: Progress):
        self.source = source
        self.dest = dest
        self.include = include
        self.exclude = exclude
        self.settings = settings
        self.progress = progress
        self.what = source.describe()

    # -- planning --------------------------------------------------------------------------------
    def plan(self) -> tuple[list[RemoteFile], str | None]:
        listing = call_with_retries(self.source.list, self.settings, f"{self.what}: listing")
        files = select(listing.files, self.include, self.exclude)
        if not files:
            hint = " after the include/exclude filters" if self.include or self.exclude else ""
            raise NotFoundError(f"{self.what}: nothing to download{hint}")
        seen: set[str] = set()
        for f in files:
            if f.path in seen and not f.unpack:
                raise BadURIError(f"{self.what}: the source lists {f.path!r} twice")
            seen.add(f.path)
        if len(files) == 1 and not files[0].unpack and (kind := archive_kind(files[0].path)):
            files = [dataclasses.replace(files[0], unpack=kind)]
        return files, listing.revision

    def up_to_date(self, existing: Manifest | None, files: list[RemoteFile], revision: str | None) -> bool:
        if existing is None:
            return False
        if any(f.unpack for f in files):
            if existing.archive != {"layers": [self._layer_identity(f) for f in files]}:
                return False
        else:
            listed = existing.by_path()
            if set(listed) != {f.path for f in files}:
                return False
            for f in files:
                entry = listed[f.path]
                if (f.size is not None and entry.size != f.size) or entry.source != _source_identity(f):
                    return False
        for entry in existing.files:
            try:
                if (self.dest / entry.path).stat().st_size != entry.size:
                    return False
            except OSError:
                return False
        return True

    def recheck_after_reboot(self, existing: Manifest | None) -> Manifest | None:
        """DEST published unsynced in an earlier boot: a power loss may have torn pages the kernel
        had not written, so re-hash every file (the caller holds DEST's lock). All intact: the
        manifest loses its boot mark (the bytes were just read back from disk, so they are on it)
        and DEST counts as complete. Otherwise DEST's manifest is removed at once — DEST reads as
        incomplete until the damaged files are fetched again — and the intact files are returned
        for the transfer to reuse."""
        if existing is None or not existing.needs_rehash():
            return existing
        log.info("%s: %s was written before a reboot without fsync; re-hashing it", self.what, self.dest)
        good = [e for e in existing.files if _intact(self.dest / e.path, e)]
        if len(good) == len(existing.files):
            existing.unsynced_boot = None
            write_manifest(self.dest, existing, durable=True)
            return existing
        log.warning("%s: %d of %d files in %s changed since they were written (power loss?); fetching "
                    "them again", self.what, len(existing.files) - len(good), len(existing.files), self.dest)
        manifest_path(self.dest).unlink(missing_ok=True)
        fsync_dir(manifest_path(self.dest).parent)
        return dataclasses.replace(existing, files=good, archive=None, unsynced_boot=None)

    @staticmethod
    def _layer_identity(f: RemoteFile) -> dict:
        return {"path": f.path, "size": f.size, "unpack": f.unpack, "prefix": f.unpack_prefix, **_source_identity(f)}

    # -- the whole download ----------------------------------------------------------------------
    def run(self) -> Manifest:
        files, revision = self.plan()
        existing = read_manifest(self.dest)
        if existing is not None and not existing.needs_rehash() and self.up_to_date(existing, files, revision):
            log.info("%s: %s is complete and unchanged; nothing to transfer", self.what, self.dest)
            return existing
        with Staging(self.dest, durable=self.settings.fsync) as st:
            st.finish_interrupted_publish()
            existing = read_manifest(self.dest)  # another writer may have finished while we waited
            existing = self.recheck_after_reboot(existing)
            if self.up_to_date(existing, files, revision):
                return existing
            try:
                manifest = self.transfer(st, files, revision, existing)
            except (IntegrityError, UnsafeArchiveError):
                st.discard()  # bad bytes are not something to resume from
                raise
            st.publish(manifest)
        return manifest

    def transfer(self, st: Staging, files: list[RemoteFile], revision, existing: Manifest | None) -> Manifest:
        events = st.events()
        idents = {f.path: _ident_hash(f) for f in files}
        live = set(idents.values())
        events = [e for e in events if e.get("id") in live]
        st.reset_journal(events)
        # Parts are journaled with the boot they were written in and trusted only within it (the
        # page cache survives kill -9, not a power loss); so are files and layers written without
        # fdatasync. A file record without a boot was synced before it was written.
        finished = {e["path"]: e for e in events
                    if e.get("event") in ("file", "layer") and e.get("boot", BOOT_ID) == BOOT_ID}
        parts_done: dict[str, set[int]] = {}
        for e in events:
            if e.get("event") == "part" and e.get("boot") == BOOT_ID:  # see FileJob.run_part
                parts_done.setdefault(e["path"], set()).add(e["i"])
        durable = self.settings.fsync
        record = st.record if durable else (lambda **e: st.record(**{"boot": BOOT_ID, **e}))

        unpacking = any(f.unpack for f in files)
        if not unpacking:
            _prune(st.tree, {f.path for f in files})
        old = existing.by_path() if existing is not None and not unpacking else {}

        results: dict[str, tuple[int, str]] = {}
        layer_results: dict[int, object] = {}
        runner = Runner(self.settings.concurrency)
        self._runner_cancel = runner.cancel
        jobs: list[FileJob] = []
        deferred: list[tuple] = []  # submitted once progress knows the plan
        already = 0
        local_path = getattr(self.source, "local_path", None)
        for index, f in enumerate(files):
            ident = idents[f.path]
            if f.unpack:
                done = finished.get(f.path)
                if done is not None and (st.layers / str(index)).is_dir():
                    layer_results[index] = _layer_from_event(done)
                    already += f.size or 0
                    continue
                deferred.append((self._unpack_task, st, index, f, ident, layer_results))
                continue
            target = st.tree / f.path
            done = finished.get(f.path)
            if done is not None and target.is_file() and target.stat().st_size == done["size"]:
                results[f.path] = (done["size"], done["xxh3"])
                already += done["size"]
                continue
            prior = old.get(f.path)
            if prior is not None and prior.source == _source_identity(f) and prior.size == f.size \
                    and _link(self.dest / f.path, target):
                if durable and existing.unsynced_boot is not None:
                    _fdatasync(target)  # reused from a DEST published unsynced in this boot
                results[f.path] = (prior.size, prior.xxh3_128)
                record(event="file", path=f.path, id=ident, size=prior.size, xxh3=prior.xxh3_128)
                already += prior.size
                continue
            if local_path is not None and _link(Path(local_path(f)), target):
                deferred.append((self._hash_linked_task, st, f, ident, target, results))
                continue
            job = FileJob(f, target, self.settings.part_size, self.source.supports_ranges,
                          parts_done.get(f.path, set()), record, ident, durable)
            already += job.resumed_bytes
            jobs.append(job)

        total = sum(f.size or 0 for f in files)
        self.progress.plan(len(files), total, already)
        self.progress.done_files = len(results) + len(layer_results)
        self.progress.start()
        ok = False
        try:
            for task in deferred:
                runner.submit(*task)
            for job in jobs:
                job.open()
            # Files in listing order, parts of one file together: the first files finish first,
            # and a large file's parts are spread over the connections.
            for job in jobs:
                pending = job.pending_parts
                for i in pending:
                    runner.submit(self._part_task, job, i, results)
                if not pending:
                    runner.submit(self._finish_resumed, job, results)
            runner.wait()
            ok = True
        finally:
            for job in jobs:
                job.close()
            self.progress.stop(ok)

        if unpacking:
            return self._merge_layers(st, files, revision, layer_results)
        entries = [FileEntry(path=f.path, size=results[f.path][0], xxh3_128=results[f.path][1],
                             source=_source_identity(f)) for f in files]
        return Manifest(source=self.what, files=entries, revision=revision)

    # -- tasks (run on the pool) -----------------------------------------------------------------
    def _part_task(self, job: FileJob, index: int, results) -> None:
        if job.run_part(index, self.source, self.settings, self._cancel(), self.progress):
            results[job.remote.path] = job.finish(self.what)
            self.progress.file_done()

    def _finish_resumed(self, job: FileJob, results) -> None:
        # Every part was done before a crash: only the hashing (from disk) remains.
        if job.part_done(len(job.parts) - 1):
            results[job.remote.path] = job.finish(self.what)
            self.progress.file_done()

    def _hash_linked_task(self, st: Staging, f: RemoteFile, ident: str, target: Path, results) -> None:
        size = target.stat().st_size
        if f.size is not None and size != f.size:
            raise IntegrityError(f"{self.what}: {f.path} changed while it was linked")
        digest = xxh3_file(target)
        st.record(event="file", path=f.path, id=ident, size=size, xxh3=digest)
        results[f.path] = (size, digest)
        self.progress.advance(size)
        self.progress.file_done()

    def _unpack_task(self, st: Staging, index: int, f: RemoteFile, ident: str, layer_results) -> None:
        target = st.layers / str(index)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        what = f"{self.what} ({f.path})" if len(f.path) < 200 else self.what
        if f.unpack == "zip":
            archive = st.layers / f"{index}.zip"
            job = FileJob(f, archive, self.settings.part_size, self.source.supports_ranges, set(),
                          lambda **_: None, ident, False)
            job.parts = [(0, f.size)]
            job.done = [False]
            job.open()
            try:
                job.run_part(0, self.source, self.settings, self._cancel(), self.progress)
                job.finish(self.what)
            finally:
                job.close()
            out = extract_zip(archive, target, what=what)
            archive.unlink()
        else:
            checkers = {a: c for a in f.checksums if (c := new_checker(a)) is not None}
            received = 0

            def tee():
                nonlocal received
                for chunk in resilient_stream(self.source, f, 0, f.size, self.settings, self._cancel()):
                    for c in checkers.values():
                        c.update(chunk)
                    received += len(chunk)
                    self.progress.advance(len(chunk))
                    yield chunk

            stream = tee()
            out = extract_tar(stream, f.unpack, target, prefix=f.unpack_prefix, what=what)
            # The tar reader stops at the end-of-archive marker: drain the padding after it so the
            # size and digest checks cover every byte the source sent.
            for _ in stream:
                pass
            if f.size is not None and received != f.size:
                raise IntegrityError(f"{what}: received {received} bytes, the source listed {f.size}")
            for algo, c in checkers.items():
                if checker_value(algo, c) != f.checksums[algo]:
                    raise IntegrityError(f"{what}: failed its {algo} check; the archive or layer is corrupt")
        # Extracted files are not fdatasync'd one by one: the record holds only within this boot.
        st.record(event="layer", path=f.path, id=ident, files={k: list(v) for k, v in out.files.items()},
                  links=out.links, whiteouts=out.whiteouts, boot=BOOT_ID)
        layer_results[index] = out
        self.progress.file_done()

    def _cancel(self):
        return self._runner_cancel

    # -- layers → tree ---------------------------------------------------------------------------
    def _merge_layers(self, st: Staging, files, revision, layer_results) -> Manifest:
        shutil.rmtree(st.tree, ignore_errors=True)
        st.tree.mkdir(parents=True)
        merged: dict[str, tuple[int, str]] = {}
        links: dict[str, str] = {}
        for index in range(len(files)):
            out = layer_results[index]
            layer = st.layers / str(index)
            for gone in out.whiteouts:
                _remove_path(st.tree / gone)
                merged = {p: v for p, v in merged.items() if p != gone and not p.startswith(gone + "/")}
                links = {p: v for p, v in links.items() if p != gone and not p.startswith(gone + "/")}
            for rel in list(out.files) + list(out.links):
                src, dst = layer / rel, st.tree / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                _remove_path(dst)
                os.rename(src, dst)
                merged.pop(rel, None)
                links.pop(rel, None)
            merged.update(out.files)
            links.update(out.links)
        shutil.rmtree(st.layers, ignore_errors=True)
        if self.settings.fsync:  # extraction writes without syncing; a durable publish needs the data
            for rel in merged:
                _fdatasync(st.tree / rel)
        entries = [FileEntry(path=p, size=s, xxh3_128=d) for p, (s, d) in sorted(merged.items())]
        if not entries:
            raise NotFoundError(f"{self.what}: the archive or image holds no files"
                                + (f" under {files[0].unpack_prefix!r}" if files[0].unpack_prefix else ""))
        archive = {"layers": [self._layer_identity(f) for f in files]}
        return Manifest(source=self.what, files=entries, revision=revision, archive=archive, links=links)


def _layer_from_event(event: dict):
    from storage.archive import Extracted

    return Extracted(files={k: (v[0], v[1]) for k, v in event.get("files", {}).items()},
                     links=dict(event.get("links", {})), whiteouts=list(event.get("whiteouts", [])))


def _intact(path: Path, entry: FileEntry) -> bool:
    try:
        return path.is_file() and path.stat().st_size == entry.size and xxh3_file(path) == entry.xxh3_128
    except OSError:
        return False


def _fdatasync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _link(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` to ``dst``; False when they are on different filesystems or links fail."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        os.link(src, dst)
        return True
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOENT, errno.EACCES, errno.ENOTSUP):
            return False
        raise


def _prune(tree: Path, keep: set[str]) -> None:
    """Remove files left in staging by an earlier attempt that the current plan does not hold."""
    if not tree.exists():
        return
    for path in sorted(tree.rglob("*"), reverse=True):
        rel = path.relative_to(tree).as_posix()
        if rel.startswith(".modeldepot"):
            continue
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif rel not in keep:
            path.unlink()


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
