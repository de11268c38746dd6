"""Fixtures and helpers for tests that need the API server: import them into a test module.

``cluster`` is one etcd + kube-apiserver for the whole session (shared by every module that imports
it), with our CRDs installed. It skips, saying why, only when the binary is not built.
``AgentProcess`` runs ``modeldepot agent`` as a real process against it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from k8s.cluster import BINARY, LocalCluster
from support.procs import free_port

REPO = Path(__file__).resolve().parents[2]
CRDS = sorted((REPO / "manifests" / "crds").glob("*.yaml"))
GROUP, VERSION = "modeldepot.io", "v1alpha1"

_shared: dict = {}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, request):
    if not BINARY.exists():
        pytest.skip(f"no kube-apiserver at {BINARY}: tests/deps/prepare.d/k8s.sh builds it "
                    "(needs Debian's deb-src archive, golang-go and ~2 GB once); see tests/k8s/.bin/build.log")
    if "cluster" not in _shared:
        c = LocalCluster(tmp_path_factory.mktemp("kube"))
        _shared["cluster"] = c
        request.addfinalizer(lambda: (c.stop(), _shared.pop("cluster", None)))
        c.start()
        install_crds(c.api_client())
    return _shared["cluster"]


def install_crds(api) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    for path in CRDS:
        body = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + 30
    for path in CRDS:
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        while True:
            crd = ext.read_custom_resource_definition(name)
            conds = {c.type: c.status for c in (crd.status.conditions or [])}
            if conds.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not established")
            time.sleep(0.1)
    time.sleep(0.5)  # discovery catches up a moment after Established


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - the server may be restarting: keep polling
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Kube:
    """The handful of API calls the tests make, through the real kubernetes client."""

    def __init__(self, api):
        from kubernetes import client

        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def node(self, name: str, labels: dict[str, str]) -> None:
        self.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})

    def group(self, name: str, spec: dict) -> dict:
        return self.custom.create_cluster_custom_object(GROUP, VERSION, "localmodelnodegroups", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalModelNodeGroup", "metadata": {"name": name}, "spec": spec})

    def cache(self, name: str, uri: str, groups: list[str], size: str = "10Mi", **extra) -> dict:
        return self.custom.create_cluster_custom_object(GROUP, VERSION, "localmodelcaches", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalModelCache", "metadata": {"name": name},
            "spec": {"sourceModelUri": uri, "modelSize": size, "nodeGroups": groups, **extra}})

    def delete_cache(self, name: str) -> None:
        self.custom.delete_cluster_custom_object(GROUP, VERSION, "localmodelcaches", name)

    def get_cache(self, name: str) -> dict:
        return self.custom.get_cluster_custom_object(GROUP, VERSION, "localmodelcaches", name)

    def status(self, name: str) -> dict:
        return self.get_cache(name).get("status") or {}

    def node_status(self, node: str) -> dict:
        return self.custom.get_cluster_custom_object(GROUP, VERSION, "localmodelnodes", node).get("status") or {}

    def wait_node_state(self, cache: str, node: str, state: str, timeout: float = 40.0) -> dict:
        return wait_for(lambda: (self.status(cache).get("nodeStatus") or {}).get(node) == state and self.status(cache),
                        timeout, f"{cache} on {node} to be {state}")


class AgentProcess:
    """``modeldepot agent`` in its own process group, logging to a file."""

    def __init__(self, root: Path, log: Path, *args: str, env: dict | None = None):
        from conftest import cli_argv, cli_env

        self.port = free_port()
        self.log = Path(log)
        self.argv = [*cli_argv("modeldepot"), "agent", "--root", str(root), "--listen", f"127.0.0.1:{self.port}", "--resync", "2",
                     "--retry-base", "0.5", *args]
        self.env = cli_env({"MODELDEPOT_FSYNC": "0", **(env or {})})
        self.proc: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self._fh, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=str(REPO), start_new_session=True, stdin=subprocess.DEVNULL)
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        _, text = self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + (labels or "")) and (labels or line[len(name):len(name) + 1] in (" ", "{")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(lambda: self.proc.poll() is None and self.get("/readyz")[0] == 200, timeout,
                 f"agent ready (log {self.log}: {self.tail()})")

    def send(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> float:
        """Send ``sig`` and wait; returns how long the process took to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        except ProcessLookupError:
            pass
        self._fh.close()
        return time.monotonic() - t0

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@pytest.fixture
def agents(tmp_path, cluster):
    """Factory: ``agents(node, *args)`` -> a started AgentProcess against the cluster; all stopped after."""
    started: list[AgentProcess] = []

    def make(node: str, *args: str, root: Path | None = None, env: dict | None = None) -> AgentProcess:
        agent = AgentProcess(root or tmp_path / f"store-{node}", tmp_path / f"agent-{node}.log",
                             "--kubeconfig", str(cluster.kubeconfig), "--node", node, *args, env=env)
        started.append(agent)
        return agent.start()

    yield make
    for agent in started:
        agent.stop(signal.SIGKILL)


@pytest.fixture
def kube(cluster):
    return Kube(cluster.api_client())
