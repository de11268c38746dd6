"""The node agent: desired state in, store reconciled, status out, metrics and probes served.

Three loops, each on its own thread, none able to stall another:
- **reconcile** (the caller's thread, ``Agent.run``): woken by any change of desired state or a
  finished download, and at least every ``resync`` seconds; compares desired with the store and
  acts (``Reconciler``). Downloads run on a bounded pool and never block it.
- **report**: writes status (this node's entries, its LocalModelNode, or standalone files);
  a failed write is retried with backoff, so an unreachable API server delays status only.
- **verify**: re-hashes the store every ``verify_interval`` seconds.
``stop`` ends them; the process then exits at once (see agent_cli): the store and engine are
crash-safe, so nothing half-downloaded is ever published and the next start resumes it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from cacheagent.agent_http import HealthServer
from cacheagent.agent_status import node_report, now_iso
from cacheagent.kube import describe
from cacheagent.metrics import Metrics
from cacheagent.reconcile import CacheState, Reconciler
from cacheagent.reconcile_select import CacheSpec
from storage.errors import CapacityError

log = logging.getLogger("modeldepot.agent")


class Source(Protocol):
    def start(self) -> None: ...
    def ready(self) -> bool: ...
    def desired(self) -> tuple[dict[str, CacheSpec], dict[str, str]]: ...
    def storage_limit(self) -> int | None: ...


class Reporter(Protocol):
    def flush(self, states: dict[str, CacheState], report: dict) -> None: ...
    def failure(self, spec: CacheSpec, reason: str, message: str) -> None: ...


class Agent:
    def __init__(self, store, source: Source, reporter: Reporter, *, credentials=None, metrics: Metrics | None = None,
                 listen: str | None = None, capacity_fixed: bool = False, max_downloads: int = 2,
                 resync: float = 30.0, verify_interval: float = 0.0, retry_base: float = 10.0,
                 stop: threading.Event | None = None, wake: threading.Event | None = None):
        self.store = store
        self.source = source
        self.reporter = reporter
        self.metrics = metrics or Metrics()
        self.capacity_fixed = capacity_fixed
        self.resync = resync
        self.verify_interval = verify_interval
        self.stop = stop or threading.Event()
        self.wake = wake or threading.Event()
        self._report_wake = threading.Event()
        self.reconciler = Reconciler(
            store, credentials=credentials or (lambda spec: {}), on_change=self.wake.set,
            on_failure=reporter.failure, metrics=self.metrics, max_downloads=max_downloads, retry_base=retry_base)
        self.verification: dict | None = None
        self._relists_seen = 0
        self.heartbeat = time.monotonic()
        self.reconciled = threading.Event()
        self.http = HealthServer(listen, self.metrics.registry, self.healthy, self.ready) if listen else None

    # -- probes ----------------------------------------------------------------------------
    def healthy(self) -> bool:
        """Alive: the reconcile loop has come round recently (it wakes at least every resync)."""
        return time.monotonic() - self.heartbeat < max(3 * self.resync, 60.0)

    def ready(self) -> bool:
        return self.reconciled.is_set() and self.healthy()

    # -- loops -----------------------------------------------------------------------------
    def run(self) -> None:
        if self.http:
            self.http.start()
        self.source.start()
        threading.Thread(target=self._report_loop, name="report", daemon=True).start()
        if self.verify_interval > 0:
            threading.Thread(target=self._verify_loop, name="verify", daemon=True).start()
        self.wake.set()
        while not self.stop.is_set():
            retry = self.reconciler.next_retry_in()
            timeout = self.resync if retry is None else min(self.resync, retry + 0.05)
            self.wake.wait(timeout)
            self.wake.clear()
            self.heartbeat = time.monotonic()
            if self.stop.is_set():
                break
            if not self.source.ready():
                continue
            try:
                with self.metrics.reconcile_duration.time():
                    self.reconcile_once()
                self.reconciled.set()
            except Exception as exc:  # noqa: BLE001 - one bad pass must not end the agent
                log.error("reconcile failed: %s", describe(exc))
                self.stop.wait(1.0)
                self.wake.set()
            self._report_wake.set()
        if self.http:
            self.http.stop()

    def reconcile_once(self) -> None:
        if not self.capacity_fixed:
            limit = self.source.storage_limit()
            if limit != self.store.capacity:
                log.info("store capacity set to %s bytes by the node group's storageLimit", limit)
                self.store.capacity = limit
        desired, broken = self.source.desired()
        self.reconciler.reconcile(desired, broken)
        try:
            evicted = self.store.evict(0)
            if evicted:
                log.info("over capacity: evicted unpinned models %s", ", ".join(evicted))
        except CapacityError as exc:
            log.warning("%s", exc)
        relists = getattr(self.source, "relists", lambda: 0)()
        if relists > self._relists_seen:
            self.metrics.watch_relists.inc(relists - self._relists_seen)
            self._relists_seen = relists
        self.metrics.observe_states(self.reconciler.states.values())
        self.metrics.observe_usage(self.store.usage())

    def _report_loop(self) -> None:
        delay = 0.25
        while not self.stop.is_set():
            self._report_wake.wait(self.resync)
            self._report_wake.clear()
            if self.stop.is_set() or not self.reconciled.is_set():
                continue
            try:
                states = dict(self.reconciler.states)
                report = node_report(self.store.list(), self.store.usage(), states, self.verification)
                self.reporter.flush(states, report)
                delay = 0.25
            except Exception as exc:  # noqa: BLE001 - status can wait; retry with backoff
                self.metrics.status_write_failures.inc()
                log.warning("status write failed (%s); retrying in %.1fs", describe(exc), delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)
                self._report_wake.set()

    def _verify_loop(self) -> None:
        # A quick check (presence and sizes) at start, a full re-hash every interval after.
        full = False
        while not self.stop.is_set():
            self.verify_once(full=full)
            full = True
            if self.stop.wait(self.verify_interval):
                return

    def verify_once(self, *, full: bool) -> list[str]:
        started = time.monotonic()
        problems = self.store.verify(full=full)
        self.verification = {"time": now_iso(), "full": full, "problems": len(problems),
                             "seconds": round(time.monotonic() - started, 3)}
        if problems:
            self.metrics.verification_failures.inc(len({p.split()[0] for p in problems if p.split()}))
            log.warning("verification found %d problem(s), first: %s", len(problems), problems[0])
        self._report_wake.set()
        return problems
