"""Write this node's view into the API: its entry in each LocalModelCache status, its own
LocalModelNode, and Events on failures.

Cache status is shared by every node, so writes are read-modify-write with the object's
resourceVersion as a precondition: a 409 Conflict means another node wrote in between, and we
read again and re-merge (``agent_status.merge_node`` touches only our keys). Nothing is written
when our entry already says what we would write, so a quiet cluster sees no status traffic.
"""

from __future__ import annotations

import logging
import uuid

from kubernetes import client
from kubernetes.client.rest import ApiException

from cacheagent.agent_status import local_models, merge_node, node_entry, now_iso, same_conditions
from cacheagent.kube import API_VERSION, CACHES, GROUP, NODES, VERSION
from cacheagent.reconcile import CacheState

log = logging.getLogger("modeldepot.agent")

EVENT_NAMESPACE = "default"  # where kubectl looks for events of cluster-scoped objects


class Conflict(Exception):
    """Optimistic-concurrency retries ran out."""


class KubeStatusWriter:
    def __init__(self, api: client.ApiClient, node: str, *, attempts: int = 10):
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.node = node
        self.attempts = attempts
        self._node_written: tuple | None = None

    def needs_write(self, obj: dict, state: CacheState | None) -> bool:
        current = node_entry(obj.get("status"), self.node)
        want = (None, "") if state is None else (state.state, state.message if state.state.endswith("Error") else "")
        return current != want

    def write_cache(self, name: str, state: CacheState | None) -> bool:
        """Set (or with None, remove) this node's entry in ``name``'s status. False if it is gone."""
        for _ in range(self.attempts):
            try:
                obj = self.custom.get_cluster_custom_object(GROUP, VERSION, CACHES, name, _request_timeout=15)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            status = obj.get("status") or {}
            merged = merge_node(status, self.node, state)
            if (merged.get("nodeStatus") == status.get("nodeStatus") and merged.get("nodeErrors") == status.get("nodeErrors")
                    and merged.get("copies") == status.get("copies")
                    and same_conditions(merged.get("conditions"), status.get("conditions"))):
                return True
            obj["status"] = merged
            try:
                # The resourceVersion in obj.metadata is the precondition: 409 if anyone wrote since.
                self.custom.replace_cluster_custom_object_status(GROUP, VERSION, CACHES, name, obj, _request_timeout=15)
                return True
            except ApiException as exc:
                if exc.status == 409:
                    continue
                if exc.status == 404:
                    return False
                raise
        raise Conflict(f"status of LocalModelCache {name}: still conflicting after {self.attempts} attempts")

    def write_node(self, report: dict, states: dict[str, CacheState]) -> None:
        """Create or update ``LocalModelNode/<node>``: spec.localModels and the status report."""
        spec = {"localModels": local_models(states)}
        fingerprint = (repr(spec), repr(report))
        if fingerprint == self._node_written:
            return
        for _ in range(self.attempts):
            try:
                obj = self.custom.get_cluster_custom_object(GROUP, VERSION, NODES, self.node, _request_timeout=15)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                obj = self.custom.create_cluster_custom_object(GROUP, VERSION, NODES, {
                    "apiVersion": API_VERSION, "kind": "LocalModelNode",
                    "metadata": {"name": self.node, "labels": {"app.kubernetes.io/managed-by": "modeldepot-agent"}},
                    "spec": spec,
                }, _request_timeout=15)
            try:
                if obj.get("spec") != spec:
                    obj["spec"] = spec
                    obj = self.custom.replace_cluster_custom_object(GROUP, VERSION, NODES, self.node, obj,
                                                                    _request_timeout=15)
                report = {**report, "lastUpdated": now_iso()}
                obj["status"] = report
                self.custom.replace_cluster_custom_object_status(GROUP, VERSION, NODES, self.node, obj,
                                                                 _request_timeout=15)
                self._node_written = fingerprint
                return
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
        raise Conflict(f"LocalModelNode {self.node}: still conflicting after {self.attempts} attempts")

    def event(self, cache: dict | None, name: str, reason: str, message: str) -> None:
        """A Warning Event on the LocalModelCache (best effort: an Event is never worth failing over)."""
        meta = (cache or {}).get("metadata") or {}
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": EVENT_NAMESPACE},
            "involvedObject": {"apiVersion": API_VERSION, "kind": "LocalModelCache", "name": name,
                               "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": f"node {self.node}: {message}"[:1024], "type": "Warning",
            "source": {"component": "modeldepot-agent", "host": self.node},
            "firstTimestamp": now_iso(), "lastTimestamp": now_iso(), "count": 1,
            "reportingComponent": "modeldepot.io/agent", "reportingInstance": self.node,
        }
        try:
            self.core.create_namespaced_event(EVENT_NAMESPACE, body, _request_timeout=10)
        except Exception as exc:  # noqa: BLE001 - best effort
            log.info("could not record an event for %s: %s", name, type(exc).__name__)


class KubeReporter:
    """The agent's Reporter for a cluster: level-triggered against the mirrored cache objects."""

    def __init__(self, writer: KubeStatusWriter, source):
        self.writer = writer
        self.source = source
        self._last_event: dict[str, tuple[str, str]] = {}

    def flush(self, states: dict[str, CacheState], report: dict) -> None:
        for name, obj in self.source.caches.snapshot().items():
            want = states.get(name)
            if self.writer.needs_write(obj, want):
                self.writer.write_cache(name, want)
        self.writer.write_node(report, {n: s for n, s in states.items() if s.uri})

    def failure(self, spec, reason: str, message: str) -> None:
        # One Event per distinct failure of a cache, not one per retry of the same failure.
        if self._last_event.get(spec.name) == (reason, message):
            return
        self._last_event[spec.name] = (reason, message)
        self.event(spec.name, reason, message)

    def event(self, name: str, reason: str, message: str) -> None:
        self.writer.event(self.source.cache_object(name), name, reason, message)
