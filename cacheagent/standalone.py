"""Standalone mode: no cluster. Desired state is a directory of YAML files; status goes beside it.

``SpecDirSource`` reads every ``*.yaml``/``*.yml`` in DIR (multi-document files too) for
LocalModelCache and LocalModelNodeGroup objects and polls the files' mtimes and sizes, so an edit,
a new file or a removal wakes the agent within ``poll`` seconds. A file that does not parse is
skipped with a warning (its objects count as absent until it is fixed). When DIR defines no
LocalModelNodeGroup, every cache selects this node.

``FileReporter`` writes ``DIR/.status/<cache>.yaml`` (the same status the cluster would carry) and
``DIR/.status/_node.yaml`` (the LocalModelNode status), each replaced atomically, and removes the
status file of a cache that is gone.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import yaml

from cacheagent.agent_status import merge_node, node_entry, now_iso
from cacheagent.reconcile import CacheState
from cacheagent.reconcile_select import CacheSpec, desired_caches, node_storage_limit

log = logging.getLogger("modeldepot.agent")

STATUS_DIR = ".status"
NODE_FILE = "_node.yaml"  # "_" cannot start a Kubernetes object name, so no cache collides


def _spec_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml")
                  and not p.name.startswith("."))


def read_specs(root: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    caches: dict[str, dict] = {}
    groups: dict[str, dict] = {}
    for path in _spec_files(root):
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
            log.warning("%s: not valid YAML, skipped: %s", path, " ".join(str(exc).split())[:200])
            continue
        for doc in docs:
            if not isinstance(doc, dict):
                continue
            name = (doc.get("metadata") or {}).get("name")
            if doc.get("kind") == "LocalModelCache" and name:
                caches[name] = doc
            elif doc.get("kind") == "LocalModelNodeGroup" and name:
                groups[name] = doc
    return caches, groups


class SpecDirSource:
    def __init__(self, root: str | os.PathLike, node: str, labels: dict[str, str], wake: threading.Event,
                 stop: threading.Event, *, poll: float = 1.0):
        self.root = Path(root)
        self.node = node
        self.labels = dict(labels)
        self.wake = wake
        self.stop = stop
        self.poll = poll
        self.caches: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}
        self._signature: tuple = ()
        self._loaded = threading.Event()

    def start(self) -> None:
        self._scan()
        threading.Thread(target=self._poll_loop, name="specs", daemon=True).start()

    def _signature_now(self) -> tuple:
        sig = []
        for p in _spec_files(self.root):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            sig.append((p.name, st.st_mtime_ns, st.st_size))
        return tuple(sig)

    def _scan(self) -> None:
        sig = self._signature_now()
        if sig == self._signature and self._loaded.is_set():
            return
        self._signature = sig
        self.caches, self.groups = read_specs(self.root)
        self._loaded.set()
        self.wake.set()

    def _poll_loop(self) -> None:
        while not self.stop.wait(self.poll):
            try:
                self._scan()
            except OSError as exc:
                log.warning("cannot read %s: %s", self.root, exc)

    def ready(self) -> bool:
        return self._loaded.is_set()

    def desired(self) -> tuple[dict[str, CacheSpec], dict[str, str]]:
        caches, groups = self.caches, self.groups
        if not groups:
            # No groups defined: every cache's groups select this node.
            names = {g for obj in caches.values() for g in (obj.get("spec") or {}).get("nodeGroups") or []}
            groups = {g: {"spec": {}} for g in names}
        # On one machine a cache that names no group is meant for this machine.
        caches = {name: _for_this_machine(obj) for name, obj in caches.items()}
        groups = {**groups, _THIS_MACHINE: {"spec": {}}}
        return desired_caches(caches, groups, self.labels, self.node)

    def storage_limit(self) -> int | None:
        return node_storage_limit(self.groups, self.labels, self.node)


_THIS_MACHINE = "modeldepot.io/this-machine"


def _for_this_machine(obj: dict) -> dict:
    spec = obj.get("spec") or {}
    if spec.get("nodeGroups"):
        return obj
    return {**obj, "spec": {**spec, "nodeGroups": [_THIS_MACHINE]}}


def _write_yaml(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=True))
    os.replace(tmp, path)


class FileReporter:
    def __init__(self, source: SpecDirSource, node: str):
        self.source = source
        self.node = node
        self.dir = source.root / STATUS_DIR

    def _read(self, path: Path) -> dict:
        try:
            return yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}

    def flush(self, states: dict[str, CacheState], report: dict) -> None:
        self.dir.mkdir(exist_ok=True)
        names = set(self.source.caches)
        for name in names:
            path = self.dir / f"{name}.yaml"
            current = self._read(path)
            status = current.get("status") or {}
            want = states.get(name)
            want_entry = (None, "") if want is None else (want.state, want.message if want.state.endswith("Error") else "")
            if path.exists() and node_entry(status, self.node) == want_entry:
                continue
            _write_yaml(path, {"name": name, "status": merge_node(status, self.node, want)})
        for path in self.dir.glob("*.yaml"):
            if path.name != NODE_FILE and path.stem not in names:
                path.unlink(missing_ok=True)
        node_path = self.dir / NODE_FILE
        current = self._read(node_path).get("status") or {}
        if {k: v for k, v in current.items() if k != "lastUpdated"} != report:
            _write_yaml(node_path, {"name": self.node, "status": {**report, "lastUpdated": now_iso()}})

    def failure(self, spec, reason: str, message: str) -> None:
        pass  # the status file carries the message; standalone has no event stream

    def event(self, name: str, reason: str, message: str) -> None:
        pass  # no event stream: the agent's log line says it
