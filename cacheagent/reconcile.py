"""Desired state (the caches that select this node) against the store; act on the difference.

``Reconciler.reconcile(desired)`` is level-triggered and idempotent: call it as often as you like
with the full desired set; it never starts a second download of a key already in flight, pins
what is present, unpins what no cache wants any more (the store may then evict it under
pressure, never before), and starts at most ``max_downloads`` downloads at once. Failed downloads
are retried with capped exponential backoff (KServe's Job never retries). Each cache's state on
this node is kept in ``states`` (name -> CacheState) for the reporters.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cacheagent.kube import describe
from cacheagent.reconcile_select import CacheSpec
from cacheagent.store import key_for
from storage.errors import PERMANENT, CapacityError, StorageError
from storage.progress import NullProgress

log = logging.getLogger("modeldepot.agent")

PENDING, DOWNLOADING, DOWNLOADED, ERROR = "NodeDownloadPending", "NodeDownloading", "NodeDownloaded", "NodeDownloadError"


@dataclass(frozen=True)
class CacheState:
    state: str
    message: str = ""
    key: str = ""
    uri: str = ""


@dataclass
class _Failure:
    attempts: int
    retry_at: float
    message: str


class _CountingProgress(NullProgress):
    """Feeds the bytes the engine receives into a callback (the downloaded-bytes metric)."""

    def __init__(self, label: str, on_bytes: Callable[[int], None]):
        super().__init__(label)
        self._on_bytes = on_bytes

    def advance(self, nbytes: int) -> None:
        super().advance(nbytes)
        self._on_bytes(nbytes)


class Reconciler:
    def __init__(
        self,
        store,
        *,
        credentials: Callable[[CacheSpec], Mapping[str, str]] = lambda spec: {},
        on_change: Callable[[], None] = lambda: None,
        on_failure: Callable[[CacheSpec, str, str], None] = lambda spec, reason, message: None,
        metrics=None,
        max_downloads: int = 2,
        retry_base: float = 10.0,
        retry_max: float = 600.0,
    ):
        self.store = store
        self.credentials = credentials
        self.on_change = on_change
        self.on_failure = on_failure
        self.metrics = metrics
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.states: dict[str, CacheState] = {}
        self._pool = ThreadPoolExecutor(max_downloads, thread_name_prefix="download")
        self._lock = threading.Lock()
        self._inflight: dict[str, CacheSpec] = {}  # key -> the spec whose download runs
        self._running: set[str] = set()  # keys a worker has actually started on
        self._failures: dict[tuple[str, str], _Failure] = {}  # (cache name, uri) -> last failure

    # -- the level-triggered step ---------------------------------------------------------

    def reconcile(self, desired: Mapping[str, CacheSpec], broken: Mapping[str, str] | None = None) -> None:
        """Bring the store toward ``desired``; never blocks on a download."""
        records = {r.key: r for r in self.store.list()}
        keys = {name: key_for(spec.uri) for name, spec in desired.items()}
        for record in records.values():
            for owner in list(record.pinned_by):
                if keys.get(owner) != record.key:
                    log.info("cache %s no longer selects this node: unpinning %s", owner, record.key)
                    self.store.unpin(record.key, owner)
        states: dict[str, CacheState] = {}
        for name, spec in desired.items():
            key = keys[name]
            record = records.get(key)
            with self._lock:
                inflight = key in self._inflight
                running = key in self._running
            if record is not None and record.state == "ready" and not inflight:
                if name not in record.pinned_by:
                    self.store.pin(key, name)
                self._failures.pop((name, spec.uri), None)
                states[name] = CacheState(DOWNLOADED, "", key, spec.uri)
                continue
            if inflight:
                states[name] = CacheState(DOWNLOADING if running else PENDING, "", key, spec.uri)
                continue
            capacity = getattr(self.store, "capacity", None)
            if capacity is not None and spec.size > capacity:
                states[name] = CacheState(ERROR, f"modelSize {spec.size} bytes exceeds this node's store capacity "
                                                 f"{capacity} bytes (the node group's storageLimit)", key, spec.uri)
                continue
            failure = self._failures.get((name, spec.uri))
            if failure and time.monotonic() < failure.retry_at:
                states[name] = CacheState(ERROR, failure.message, key, spec.uri)
                continue
            with self._lock:
                self._inflight[key] = spec
            self._pool.submit(self._download, key, spec)
            states[name] = CacheState(PENDING, "", key, spec.uri)
        for name, why in (broken or {}).items():
            states[name] = CacheState(ERROR, why)
        self.states = states

    def next_retry_in(self) -> float | None:
        """Seconds until the earliest failed download may be retried (None: nothing to retry)."""
        if not self._failures:
            return None
        return max(0.0, min(f.retry_at for f in self._failures.values()) - time.monotonic())

    def in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    # -- one download, on a worker thread --------------------------------------------------

    def _download(self, key: str, spec: CacheSpec) -> None:
        with self._lock:
            self._running.add(key)
        self._set_state(spec, CacheState(DOWNLOADING, "", key, spec.uri))
        self.on_change()
        if self.metrics:
            self.metrics.downloads_in_flight.inc()
        try:
            # Credentials are read now, not when the spec was seen: a rotated Secret takes effect.
            env = {**os.environ, **self.credentials(spec)}
            on_bytes = self.metrics.downloaded_bytes.inc if self.metrics else (lambda n: None)
            self.store.ensure(spec.uri, env=env, pin=spec.name, progress=_CountingProgress(key, on_bytes))
            self._failures.pop((spec.name, spec.uri), None)
            self._set_state(spec, CacheState(DOWNLOADED, "", key, spec.uri))
            log.info("cache %s: %s is on this node", spec.name, key)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, an event and a retry
            self._record_failure(key, spec, exc)
        finally:
            with self._lock:
                self._inflight.pop(key, None)
                self._running.discard(key)
            if self.metrics:
                self.metrics.downloads_in_flight.dec()
            self.on_change()

    def _record_failure(self, key: str, spec: CacheSpec, exc: Exception) -> None:
        if isinstance(exc, CapacityError):
            reason = "InsufficientCapacity"
        elif isinstance(exc, PERMANENT):
            reason = "PermanentDownloadError"
        elif isinstance(exc, StorageError):
            reason = "DownloadFailed"
        else:
            reason = "AgentError"
        # StorageError messages are one line and already scrubbed of credentials by the engine.
        message = str(exc) if isinstance(exc, StorageError) else describe(exc)
        previous = self._failures.get((spec.name, spec.uri))
        attempts = (previous.attempts if previous else 0) + 1
        delay = min(self.retry_base * 2 ** (attempts - 1), self.retry_max)
        self._failures[(spec.name, spec.uri)] = _Failure(attempts, time.monotonic() + delay, message)
        self._set_state(spec, CacheState(ERROR, message, key, spec.uri))
        log.warning("cache %s: download failed (%s), attempt %d, next try in %.0fs: %s",
                    spec.name, reason, attempts, delay, message)
        if self.metrics:
            self.metrics.download_failures.labels(reason).inc()
        self.on_failure(spec, reason, message)

    def _set_state(self, spec: CacheSpec, state: CacheState) -> None:
        states = dict(self.states)
        states[spec.name] = state
        self.states = states

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
