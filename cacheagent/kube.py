"""The agent's view of the Kubernetes API: a client, and a list+watch mirror of one custom resource.

``Mirror`` keeps an in-memory copy of every object of a cluster-scoped ``modeldepot.io`` kind.
Contract: after ``synced`` is set, ``objects`` equals the server's state as of ``resource_version``
or lags it only by events still in flight. It lists once, then watches from the list's
resourceVersion (with bookmarks, so an idle watch still advances); a broken connection resumes
the watch from the last resourceVersion it saw; a ``410 Gone`` (the server compacted that
history) re-lists; any other error backs off exponentially (capped) and tries again. It never
gives up: a node agent outlives API server restarts.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

GROUP = "modeldepot.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CACHES = "localmodelcaches"
GROUPS = "localmodelnodegroups"
NODES = "localmodelnodes"

log = logging.getLogger("modeldepot.agent")


class Gone(Exception):
    """The resourceVersion we watch from was compacted away: list again."""


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """A client from ``kubeconfig`` if given, else the pod's service account, else ~/.kube/config."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


def describe(exc: BaseException) -> str:
    """One line for a log or a status message; an ApiException's body and headers stay out."""
    if isinstance(exc, ApiException):
        detail = ""
        if exc.status in (400, 409, 410, 422):
            # The server's own message (a validation error names our fields); never request headers.
            try:
                detail = ": " + " ".join(str(json.loads(exc.body).get("message", "")).split())[:300]
            except (TypeError, ValueError, AttributeError):
                detail = ""
        return f"API server answered {exc.status} {exc.reason or ''}".strip() + detail
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


class Mirror:
    """List+watch one cluster-scoped custom resource into ``objects`` (name -> object dict)."""

    def __init__(
        self,
        api: client.ApiClient,
        plural: str,
        on_change: Callable[[], None],
        stop: threading.Event,
        *,
        watch_timeout: int = 240,
        backoff_initial: float = 0.25,
        backoff_max: float = 5.0,
    ):
        self.custom = client.CustomObjectsApi(api)
        self.plural = plural
        self.on_change = on_change
        self.stop = stop
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.objects: dict[str, dict] = {}
        self.resource_version: str | None = None
        self.synced = threading.Event()
        self.lists = 0  # how many full lists were needed (1 + one per 410 Gone)
        self.errors = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> Mirror:
        self._thread = threading.Thread(target=self.run, name=f"mirror-{self.plural}", daemon=True)
        self._thread.start()
        return self

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return dict(self.objects)

    def run(self) -> None:
        delay = self.backoff_initial
        while not self.stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch()
                delay = self.backoff_initial
            except Gone:
                log.info("watch of %s: resourceVersion %s is gone; listing again", self.plural, self.resource_version)
                self.resource_version = None
            except Exception as exc:  # noqa: BLE001 - any failure: back off and retry, forever
                self.errors += 1
                log.warning("watch of %s failed (%s); retrying in %.1fs", self.plural, describe(exc), delay)
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)

    def _list(self) -> None:
        listing = self.custom.list_cluster_custom_object(GROUP, VERSION, self.plural, _request_timeout=30)
        with self._lock:
            self.objects = {o["metadata"]["name"]: o for o in listing.get("items", [])}
        self.resource_version = listing["metadata"]["resourceVersion"]
        self.lists += 1
        self.synced.set()
        self.on_change()

    def _watch(self) -> None:
        try:
            resp = self.custom.list_cluster_custom_object(
                GROUP, VERSION, self.plural, watch=True, allow_watch_bookmarks=True,
                resource_version=self.resource_version, timeout_seconds=self.watch_timeout,
                _preload_content=False, _request_timeout=(10, self.watch_timeout + 30),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise Gone() from None
            raise
        try:
            status = getattr(resp, "status", 200)
            if status == 410:
                raise Gone()
            if not 200 <= status < 300:
                raise ApiException(status=status, reason=getattr(resp, "reason", ""))
            for line in iter_resp_lines(resp):
                if self.stop.is_set():
                    return
                if line.strip():
                    self._apply(json.loads(line))
        finally:
            resp.release_conn()

    def _apply(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiException(status=obj.get("code", 500), reason=obj.get("reason", "watch error"))
        meta = obj.get("metadata") or {}
        if kind != "BOOKMARK":
            with self._lock:
                if kind == "DELETED":
                    self.objects.pop(meta.get("name"), None)
                else:
                    self.objects[meta["name"]] = obj
        if meta.get("resourceVersion"):
            self.resource_version = meta["resourceVersion"]
        if kind != "BOOKMARK":
            self.on_change()
