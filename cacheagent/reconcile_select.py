"""Which LocalModelCaches want a copy on this node: desired state, computed from specs and labels.

Pure functions over plain dicts (the objects as the API server or a YAML file gives them), so the
cluster agent and standalone mode decide identically.

A LocalModelNodeGroup selects a node when every ``spec.nodeSelector`` label matches and, if node
affinity is given, at least one of its ``nodeSelectorTerms`` matches (PersistentVolume semantics:
terms are ORed, a term's expressions ANDed). Affinity is read from ``spec.nodeAffinity.required``
or, for YAML written for KServe, ``spec.persistentVolumeSpec.nodeAffinity.required``. A group with
neither selects every node. A cache selects the node when any of its ``nodeGroups`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from storage.config import parse_size


@dataclass(frozen=True)
class CacheSpec:
    """What one LocalModelCache asks of this node."""

    name: str
    uri: str
    size: int
    groups: tuple[str, ...]
    credentials: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


def cache_spec(obj: Mapping) -> CacheSpec:
    """A CacheSpec from a LocalModelCache object; raises ValueError when the spec is unusable."""
    name = obj.get("metadata", {}).get("name")
    spec = obj.get("spec") or {}
    uri = spec.get("sourceModelUri")
    if not name or not uri:
        raise ValueError(f"LocalModelCache {name or '?'} has no sourceModelUri")
    try:
        size = parse_size(spec.get("modelSize", 0))
    except Exception as exc:  # noqa: BLE001 - storage raises its own error type for bad sizes
        raise ValueError(f"LocalModelCache {name}: {exc}") from None
    creds = dict(spec.get("credentials") or {})
    if spec.get("serviceAccountName") and "serviceAccountName" not in creds:
        creds["serviceAccountName"] = spec["serviceAccountName"]
    return CacheSpec(name, uri, size, tuple(spec.get("nodeGroups") or ()), creds)


def _requirement_matches(req: Mapping, labels: Mapping[str, str]) -> bool:
    key, op, values = req.get("key"), req.get("operator", "In"), list(req.get("values") or [])
    present = key in labels
    value = labels.get(key)
    if op == "In":
        return present and value in values
    if op == "NotIn":
        return not present or value not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and values:
        try:
            a, b = int(value), int(values[0])
        except (TypeError, ValueError):
            return False
        return a > b if op == "Gt" else a < b
    return False


def _term_matches(term: Mapping, labels: Mapping[str, str], node_name: str) -> bool:
    fields = {"metadata.name": node_name}
    return all(_requirement_matches(r, labels) for r in term.get("matchExpressions") or []) and all(
        _requirement_matches(r, fields) for r in term.get("matchFields") or []
    )


def _affinity_terms(spec: Mapping) -> list[Mapping] | None:
    for holder in (spec, spec.get("persistentVolumeSpec") or {}):
        required = ((holder.get("nodeAffinity") or {}).get("required")) or {}
        if required.get("nodeSelectorTerms"):
            return list(required["nodeSelectorTerms"])
    return None


def group_selects(group: Mapping, labels: Mapping[str, str], node_name: str) -> bool:
    """Whether a LocalModelNodeGroup object selects the node with these labels."""
    spec = group.get("spec") or {}
    selector = spec.get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    terms = _affinity_terms(spec)
    return terms is None or any(_term_matches(t, labels, node_name) for t in terms)


def desired_caches(
    caches: Mapping[str, Mapping], groups: Mapping[str, Mapping], labels: Mapping[str, str], node_name: str
) -> tuple[dict[str, CacheSpec], dict[str, str]]:
    """(caches that select this node by name, caches whose spec is unusable -> why)."""
    selecting = {g for g, obj in groups.items() if group_selects(obj, labels, node_name)}
    wanted: dict[str, CacheSpec] = {}
    broken: dict[str, str] = {}
    for name, obj in caches.items():
        if obj.get("metadata", {}).get("deletionTimestamp"):
            continue
        try:
            spec = cache_spec(obj)
        except ValueError as exc:
            broken[name] = str(exc)
            continue
        if selecting.intersection(spec.groups):
            wanted[name] = spec
    return wanted, broken


def node_storage_limit(groups: Mapping[str, Mapping], labels: Mapping[str, str], node_name: str) -> int | None:
    """The smallest ``storageLimit`` among the groups that select this node (None: no limit set)."""
    limits = []
    for obj in groups.values():
        limit = (obj.get("spec") or {}).get("storageLimit")
        if limit is not None and group_selects(obj, labels, node_name):
            try:
                limits.append(parse_size(limit))
            except Exception:  # noqa: BLE001 - a malformed limit is ignored, not fatal
                continue
    return min(limits) if limits else None
