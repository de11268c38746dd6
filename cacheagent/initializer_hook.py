"""``storage-initializer --cache-dir DIR``: serve a download from the node store.

On a hit DEST is materialized with no network I/O (hard links when DEST shares the store's
filesystem, verified copies otherwise). On a miss the store is filled through the engine first.
Either way DEST is published atomically with its manifest, exactly as ``storage.download`` does.
"""

from __future__ import annotations

import os

from cacheagent.store import Store
from storage.errors import NotFoundError
from storage.manifest import Manifest

CAPACITY_ENV = "MODELDEPOT_CACHE_CAPACITY"  # the store's limit, e.g. 500Gi (unset: no limit)
_STORE_KWARGS = ("env", "progress", "include", "exclude", "concurrency", "part_size")


def download_via_cache(uri: str, dest: str | os.PathLike, cache_dir: str | os.PathLike,
                       **download_kwargs) -> Manifest:
    """Like ``storage.download(uri, dest, **download_kwargs)``, through the store at ``cache_dir``.

    Accepts the engine's keyword arguments (include, exclude, concurrency, part_size, env,
    progress). Raises what the engine raises, or CapacityError when the store cannot hold it.
    """
    unknown = set(download_kwargs) - set(_STORE_KWARGS)
    if unknown:
        raise TypeError(f"download_via_cache() got unexpected keyword arguments {sorted(unknown)}")
    env = download_kwargs.get("env")
    capacity = (os.environ if env is None else env).get(CAPACITY_ENV) or None
    store = Store(cache_dir, capacity=capacity)
    for attempt in range(3):
        record = store.ensure(uri, **download_kwargs)
        try:
            return store.materialize(record.key, dest)
        except NotFoundError:
            if attempt == 2:  # evicted between ensure and materialize, three times over
                raise
    raise AssertionError("unreachable")
