"""Desired state from the cluster: LocalModelCache and LocalModelNodeGroup mirrors plus this Node's
labels. ``desired()`` answers from memory (and the last labels it could read), so an API server
outage leaves the agent working on what it last knew instead of dropping anything."""

from __future__ import annotations

import logging
import threading
import time

from kubernetes import client

from cacheagent.kube import CACHES, GROUPS, Mirror, describe
from cacheagent.reconcile_select import CacheSpec, desired_caches, node_storage_limit

log = logging.getLogger("modeldepot.agent")


class KubeSource:
    def __init__(self, api: client.ApiClient, node: str, wake: threading.Event, stop: threading.Event,
                 *, label_refresh: float = 10.0, backoff_max: float = 5.0):
        self.node = node
        self.core = client.CoreV1Api(api)
        self.caches = Mirror(api, CACHES, wake.set, stop, backoff_max=backoff_max)
        self.groups = Mirror(api, GROUPS, wake.set, stop, backoff_max=backoff_max)
        self.label_refresh = label_refresh
        self.labels: dict[str, str] | None = None
        self._labels_at = 0.0

    def start(self) -> None:
        self.caches.start()
        self.groups.start()

    def ready(self) -> bool:
        return self.caches.synced.is_set() and self.groups.synced.is_set()

    def node_labels(self) -> dict[str, str]:
        if self.labels is None or time.monotonic() - self._labels_at > self.label_refresh:
            try:
                node = self.core.read_node(self.node, _request_timeout=10)
                self.labels = dict(node.metadata.labels or {})
            except Exception as exc:  # noqa: BLE001 - keep the last labels we knew
                log.warning("cannot read Node %s (%s); using its last known labels", self.node, describe(exc))
                if self.labels is None:
                    return {}
            self._labels_at = time.monotonic()
        return self.labels

    def desired(self) -> tuple[dict[str, CacheSpec], dict[str, str]]:
        return desired_caches(self.caches.snapshot(), self.groups.snapshot(), self.node_labels(), self.node)

    def storage_limit(self) -> int | None:
        return node_storage_limit(self.groups.snapshot(), self.node_labels(), self.node)

    def cache_object(self, name: str) -> dict | None:
        return self.caches.snapshot().get(name)

    def relists(self) -> int:
        return max(0, self.caches.lists - 1) + max(0, self.groups.lists - 1)
