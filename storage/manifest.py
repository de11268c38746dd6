"""`DEST/.modeldepot/manifest.json`: the proof that a destination is complete.

Written last and atomically. It records the source URI (redacted), the resolved revision, and per
file the relative path, size, xxh3-128 and the checksum/etag the source offered. ``verify``
re-hashes DEST against it; the node store links blobs by its xxh3 values.

``unsynced_boot`` is set when DEST was published without fdatasync (MODELDEPOT_FSYNC=0, the
default): the kernel's boot id at publish time. Within that boot the page cache is the truth, so
sizes suffice; after a reboot (a power loss may have torn unwritten pages) DEST is trusted only
once it has been re-hashed — the engine does that on the next run, ``verify`` always does.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from storage.hashing import xxh3_file

FORMAT = 1
META_DIR = ".modeldepot"
MANIFEST_NAME = "manifest.json"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


#: Changes at every boot: data written but not synced in another boot may be torn.
BOOT_ID = _boot_id()


@dataclass
class FileEntry:
    path: str
    size: int
    xxh3_128: str
    source: dict = field(default_factory=dict)  # etag, version, md5/sha256/crc32c the source promised


@dataclass
class Manifest:
    source: str
    files: list[FileEntry]
    revision: str | None = None
    archive: dict | None = None  # the single archive DEST was extracted from, with its identity
    links: dict[str, str] = field(default_factory=dict)  # in-tree symlinks (from archives): path -> target
    format: int = FORMAT
    created: str = ""
    unsynced_boot: str | None = None  # boot id when published without fdatasync; see the module doc

    def needs_rehash(self) -> bool:
        """Published without sync in an earlier boot: sizes prove nothing, contents must be hashed."""
        return self.unsynced_boot is not None and self.unsynced_boot != BOOT_ID

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def to_json(self) -> str:
        doc = asdict(self)
        doc["files"] = sorted(doc["files"], key=lambda f: f["path"])
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        doc = json.loads(text)
        if doc.get("format") != FORMAT:
            raise ValueError(f"manifest format {doc.get('format')!r} is not {FORMAT}")
        files = [FileEntry(**f) for f in doc.pop("files")]
        return cls(files=files, **doc)


def manifest_path(dest: str | os.PathLike) -> Path:
    return Path(dest) / META_DIR / MANIFEST_NAME


def read_manifest(dest: str | os.PathLike) -> Manifest | None:
    """The manifest of DEST, or None when DEST has none (or an unreadable one)."""
    try:
        return Manifest.from_json(manifest_path(dest).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_manifest(tree: str | os.PathLike, manifest: Manifest, *, durable: bool = True) -> Path:
    """Write ``manifest`` into ``tree`` atomically (temp file, fsync, rename)."""
    if not manifest.created:
        manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    target = manifest_path(tree)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(manifest.to_json())
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def verify(dest: str | os.PathLike, *, full: bool = True) -> list[str]:
    """Check DEST against its manifest; return the problems found (empty when it matches).

    Each problem is one line starting with the relative path. ``full=False`` checks presence and
    sizes only (no re-hash) — unless DEST was published unsynced in an earlier boot, where sizes
    prove nothing and every file is re-hashed. Files DEST holds that the manifest does not list
    are problems too.
    """
    dest = Path(dest)
    manifest = read_manifest(dest)
    if manifest is None:
        return [f"{META_DIR}/{MANIFEST_NAME}: missing or unreadable; DEST was never completed by modeldepot"]
    full = full or manifest.needs_rehash()
    problems: list[str] = []
    listed = manifest.by_path()
    for rel, entry in sorted(listed.items()):
        path = dest / rel
        try:
            st = path.lstat()
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        if not path.is_file():
            problems.append(f"{rel}: not a regular file")
            continue
        if st.st_size != entry.size:
            problems.append(f"{rel}: size {st.st_size} != {entry.size} in the manifest")
            continue
        if full:
            digest = xxh3_file(path)
            if digest != entry.xxh3_128:
                problems.append(f"{rel}: xxh3-128 {digest} != {entry.xxh3_128} in the manifest")
    for rel, target in sorted(manifest.links.items()):
        path = dest / rel
        if not path.is_symlink():
            problems.append(f"{rel}: missing symlink (to {target})")
        elif os.readlink(path) != target:
            problems.append(f"{rel}: symlink to {os.readlink(path)!r}, the manifest says {target!r}")
    for path in sorted(dest.rglob("*")):
        rel = path.relative_to(dest).as_posix()
        if rel == META_DIR or rel.startswith(META_DIR + "/") or (path.is_dir() and not path.is_symlink()):
            continue
        if rel in manifest.links:
            continue
        if rel not in listed:
            problems.append(f"{rel}: not in the manifest")
    return problems
