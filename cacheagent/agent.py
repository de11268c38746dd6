"""The node agent: desired state in, store reconciled, status out, metrics and probes served.

Three loops, each on its own thread, none able to stall another:
- **reconcile** (the caller's thread, ``Agent.run``): woken by any change of desired state or a
  finished download, and at least every ``resync`` seconds; compares desired with the store and
  acts (``Reconciler``). Downloads run on a bounded pool and never block it.
- **report**: writes status (this node's entries, its LocalModelNode, or standalone files);
  a failed write is retried with backoff, so an unreachable API server delays status only.
- **verify**: checks the store (presence and sizes at start, a full re-hash every
  ``verify_interval`` seconds) and repairs what it finds: a damaged model is unpublished without
  its damaged files (``Store.repair``) and reconcile, woken, fetches those again with the cache's
  own credentials. A model in use right now is retried every ``repair_retry`` seconds.
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
from cacheagent.maintenance import CORRUPT, Problem, RepairReport
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
    def event(self, name: str, reason: str, message: str) -> None: ...


class Agent:
    def __init__(self, store, source: Source, reporter: Reporter, *, credentials=None, metrics: Metrics | None = None,
                 listen: str | None = None, capacity_fixed: bool = False, max_downloads: int = 2,
                 resync: float = 30.0, verify_interval: float = 0.0, retry_base: float = 10.0,
                 repair_retry: float = 5.0, stop: threading.Event | None = None,
                 wake: threading.Event | None = None):
        self.store = store
        self.source = source
        self.reporter = reporter
        self.metrics = metrics or Metrics()
        self.capacity_fixed = capacity_fixed
        self.resync = resync
        self.verify_interval = verify_interval
        self.repair_retry = repair_retry
        self.stop = stop or threading.Event()
        self.wake = wake or threading.Event()
        self._report_wake = threading.Event()
        self.reconciler = Reconciler(
            store, credentials=credentials or (lambda spec: {}), on_change=self.wake.set,
            on_failure=reporter.failure, metrics=self.metrics, max_downloads=max_downloads, retry_base=retry_base)
        self.verification: dict | None = None
        self._deferred: set[str] = set()  # keys whose repair waits for a reader or writer
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
        # A quick check (presence and sizes) at start, a full re-hash every interval after. Damaged
        # models that were in use are retried every repair_retry seconds from the problems already
        # found (no new pass), until they are repaired or the next pass is due.
        full, pending, due = False, [], 0.0
        while not self.stop.is_set():
            try:
                if pending and time.monotonic() < due:
                    pending = self.repair(pending)
                else:
                    pending = self.verify_once(full=full)
                    full = True
                    due = time.monotonic() + self.verify_interval
            except Exception as exc:  # noqa: BLE001 - one failed pass must not end verification
                log.error("verification failed: %s", describe(exc))
                pending, due = [], time.monotonic() + self.verify_interval
            wait = max(0.0, due - time.monotonic())
            if self.stop.wait(min(wait, self.repair_retry) if pending else wait):
                return

    def verify_once(self, *, full: bool) -> list[Problem]:
        """One pass over the store, repairing what it finds; returns the problems left for a later
        try (their models were in use)."""
        started = time.monotonic()
        problems = self.store.problems(full=full)
        self.verification = {"time": now_iso(), "full": full, "problems": len(problems),
                             "seconds": round(time.monotonic() - started, 3)}
        pending = []
        if problems:
            self.metrics.verification_failures.inc(len({p.key for p in problems}))
            log.warning("verification found %d problem(s), first: %s", len(problems), problems[0].line)
            pending = self.repair(problems)
        self._report_wake.set()
        return pending

    def repair(self, problems: list[Problem]) -> list[Problem]:
        """Take damaged models out of the store (``Store.repair``) and wake reconcile, which fetches
        their damaged files again with each cache's own credentials. Returns the problems of models
        in use right now, to try again."""
        report = self.store.repair(problems)
        owners: dict[str, list[str]] = {}
        for name, st in self.reconciler.states.items():
            if st.key:
                owners.setdefault(st.key, []).append(name)
        found: dict[str, list[Problem]] = {}
        for p in report.found:
            found.setdefault(p.key, []).append(p)
        for key, key_problems in sorted(found.items()):
            caches = sorted(owners.get(key, []))
            message = repair_message(key, key_problems, report, wanted=bool(caches))
            log.warning("%s (%s)", message, "cache " + ", ".join(caches) if caches else "no cache here wants it")
            for kind in sorted({p.kind for p in key_problems}):
                self.metrics.repairs.labels(kind).inc()
            for name in caches:
                self.reporter.event(name, "VerificationFailed", message)
        skipped = set(report.skipped)
        if skipped - self._deferred:
            log.info("models in use, repaired when they are free (tried every %.0fs): %s",
                     min(self.verify_interval, self.repair_retry), ", ".join(sorted(skipped - self._deferred)))
        self._deferred = skipped
        self.metrics.repairs_deferred.inc(len(skipped))
        if report.taken_out:
            self.wake.set()
        # A corrupt blob's problem is kept while any model is skipped: it may be one linking it.
        return [p for p in problems if p.key in skipped or (skipped and p.kind == CORRUPT)]


def repair_message(key: str, problems: list[Problem], report: RepairReport, *, wanted: bool) -> str:
    """One line for a log and an Event: the model, what was wrong (at most three things), what was done."""
    what = "; ".join(f"{p.path}: {p.detail}" if p.path else p.detail for p in problems[:3])
    if len(problems) > 3:
        what += f"; and {len(problems) - 3} more"
    refetch = "re-fetching" if wanted else "not re-fetching (no cache here wants it)"
    if key in report.unpublished:
        n = len(report.unpublished[key])
        done = f"unpublished it, {refetch} {n} file{'s' if n != 1 else ''}"
    elif key in report.discarded:
        done = f"removed it, {refetch} the whole model"
    else:
        done = "removed the files its manifest does not list"
    return f"model {key}: {what}; {done}"
