"""Where everything lives under the store ROOT, and how a model's key is derived.

```
ROOT/
  blobs/xxh3/<hex>        read-only contents, one inode per distinct content (identity = digest)
  ingest/<key>/           a download in progress or finished but not yet committed
  ingest/.<key>.modeldepot-staging/   the engine's resumable staging for it
  ingest/.tmp/            temporary links and copies made while committing
  ingest/.trash/          models being deleted (eviction, repair)
  models/<key>/           published: hard links into blobs/ plus .modeldepot/manifest.json
  state/models/<key>.json source URI, filters, pins, last use
  state/locks/            flock files: one per key, one for the whole store
```
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path

HEX = re.compile(r"^[0-9a-f]{32}$")
KEY = re.compile(r"^[0-9a-f]{16}$")

CRASH_ENV = "MODELDEPOT_TEST_CRASH_AT"


def key_for(uri: str, *, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> str:
    """KServe's storageKey: the first 16 hex chars of sha256(uri).

    A filtered download is a different model, so include/exclude globs (when any) are part of
    what is hashed; the unfiltered key is exactly KServe's.
    """
    text = uri
    if include or exclude:
        text += "\n" + json.dumps({"include": sorted(include or []), "exclude": sorted(exclude or [])})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _crashpoint(name: str) -> None:
    """Test hook: die like ``kill -9`` when MODELDEPOT_TEST_CRASH_AT names this step."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Layout:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.blobs = self.root / "blobs" / "xxh3"
        self.ingest = self.root / "ingest"
        self.tmp = self.ingest / ".tmp"
        self.trash = self.ingest / ".trash"
        self.models = self.root / "models"
        self.state = self.root / "state" / "models"
        self.locks = self.root / "state" / "locks"

    def create(self) -> None:
        for d in (self.blobs, self.tmp, self.trash, self.models, self.state, self.locks):
            d.mkdir(parents=True, exist_ok=True)

    def blob(self, digest: str) -> Path:
        if not HEX.match(digest):
            raise ValueError(f"{digest!r} is not an xxh3-128 hex digest")
        return self.blobs / digest

    def model(self, key: str) -> Path:
        return self.models / key

    def ingesting(self, key: str) -> Path:
        return self.ingest / key

    def staging(self, key: str) -> Path:
        """The engine's staging sibling of ``ingest/<key>`` (see storage.staging)."""
        return self.ingest / f".{key}.modeldepot-staging"

    def engine_lock(self, key: str) -> Path:
        return self.ingest / f".{key}.modeldepot-lock"

    def record(self, key: str) -> Path:
        return self.state / f"{key}.json"

    def key_lock(self, key: str) -> Path:
        return self.locks / f"{key}.lock"

    def state_lock(self, key: str) -> Path:
        return self.locks / f"{key}.state.lock"

    @property
    def store_lock(self) -> Path:
        return self.locks / "store.lock"

    def keys_present(self) -> set[str]:
        """Every key with a published model, an ingest, a staging dir or a state record."""
        keys: set[str] = set()
        for d in (self.models, self.ingest):
            if d.is_dir():
                keys.update(p.name for p in d.iterdir() if KEY.match(p.name))
        if self.ingest.is_dir():
            for p in self.ingest.iterdir():
                m = re.match(r"^\.([0-9a-f]{16})\.modeldepot-staging$", p.name)
                if m:
                    keys.add(m.group(1))
        if self.state.is_dir():
            keys.update(p.stem for p in self.state.glob("*.json") if KEY.match(p.stem))
        return keys
