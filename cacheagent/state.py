"""``state/models/<key>.json``: what each key is (source URI, filters), who pins it, when it was used.

Each record is one small JSON file replaced atomically (temp file, rename), so a crash leaves the
old record or the new one. Read-modify-write happens under the key's state lock, which is held
only for the update itself (never across a download).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field

from cacheagent.layout import Layout
from cacheagent.locks import FileLock


@dataclass
class ModelRecord:
    """One model as the store sees it. ``uri`` is redacted (safe to log or put in a status)."""

    key: str
    uri: str
    bytes: int | None
    files: int | None
    pinned_by: list[str]
    last_used: float | None
    state: str  # "ready" (published), "ingesting" (a download holds it), "partial", "absent"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Usage:
    """Bytes of content the store holds, each blob counted once; ``ingesting`` is not in ``used``."""

    used: int
    capacity: int | None
    available: int
    blobs: int = 0
    ingesting: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Entry:
    """The stored record (``uri`` unredacted: scrub re-fetches from it; the file is 0600)."""

    uri: str
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    pinned_by: list[str] = field(default_factory=list)
    last_used: float | None = None


class States:
    def __init__(self, layout: Layout):
        self.layout = layout

    def get(self, key: str) -> Entry | None:
        try:
            doc = json.loads(self.layout.record(key).read_text())
            return Entry(**doc)
        except (OSError, ValueError, TypeError):
            return None

    def put(self, key: str, entry: Entry, *, durable: bool = True) -> None:
        path = self.layout.record(key)
        tmp = path.with_name(f".{key}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(entry), fh, sort_keys=True)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)

    def update(self, key: str, *, uri: str | None = None, include=None, exclude=None,
               pin: str | None = None, unpin: str | None = None, touch: bool = False,
               durable: bool = True) -> Entry | None:
        """Change one record under its state lock; returns it (None when absent and no uri given)."""
        with FileLock(self.layout.state_lock(key)):
            entry = self.get(key)
            if entry is None:
                if uri is None:
                    return None
                entry = Entry(uri=uri)
            if uri is not None:
                entry.uri = uri
            if include is not None:
                entry.include = list(include)
            if exclude is not None:
                entry.exclude = list(exclude)
            if pin and pin not in entry.pinned_by:
                entry.pinned_by = sorted([*entry.pinned_by, pin])
            if unpin:
                entry.pinned_by = [p for p in entry.pinned_by if p != unpin]
            if touch:
                entry.last_used = time.time()
            self.put(key, entry, durable=durable)
            return entry

    def remove(self, key: str) -> None:
        with FileLock(self.layout.state_lock(key)):
            self.layout.record(key).unlink(missing_ok=True)
