"""Status documents, as plain dicts: one node's entry merged into a LocalModelCache status, and the
LocalModelNode status. Shared by the cluster reporter and standalone mode, so both say the same.

A cache's ``status`` is written by every node that holds it, so each agent changes only its own
keys (``nodeStatus[node]``, ``nodeErrors[node]``) and recomputes what derives from all of them
(``copies``, ``conditions``) from the merged maps: whichever agent writes last, they are right.
"""

from __future__ import annotations

import datetime as _dt

from cacheagent.reconcile import DOWNLOADED, ERROR, CacheState
from storage.sources.base import redact_uri

_MODEL_STATE = {
    "NodeDownloadPending": "ModelDownloadPending",
    "NodeDownloading": "ModelDownloading",
    "NodeDownloaded": "ModelDownloaded",
    "NodeDownloadError": "ModelDownloadError",
}


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def node_entry(status: dict | None, node: str) -> tuple[str | None, str]:
    """(this node's state, its error message) as ``status`` records them."""
    status = status or {}
    return (status.get("nodeStatus") or {}).get(node), (status.get("nodeErrors") or {}).get(node, "")


def merge_node(status: dict | None, node: str, state: CacheState | None) -> dict:
    """``status`` with this node's entry set to ``state`` (None removes it), derived fields recomputed."""
    status = dict(status or {})
    node_status = dict(status.get("nodeStatus") or {})
    errors = dict(status.get("nodeErrors") or {})
    if state is None:
        node_status.pop(node, None)
        errors.pop(node, None)
    else:
        node_status[node] = state.state
        if state.state == ERROR and state.message:
            errors[node] = state.message
        else:
            errors.pop(node, None)
    status["nodeStatus"] = node_status
    status["nodeErrors"] = errors
    available = sum(1 for s in node_status.values() if s == DOWNLOADED)
    failed = sum(1 for s in node_status.values() if s == ERROR)
    status["copies"] = {"available": available, "total": len(node_status), "failed": failed}
    status["conditions"] = _conditions(status.get("conditions") or [], node_status, errors)
    return status


def _conditions(old: list[dict], node_status: dict, errors: dict) -> list[dict]:
    total = len(node_status)
    available = sum(1 for s in node_status.values() if s == DOWNLOADED)
    failed = sorted(n for n, s in node_status.items() if s == ERROR)
    ready = total > 0 and available == total
    wanted = [
        ("Ready", ready, "AllCopiesAvailable" if ready else ("NoNodes" if total == 0 else "CopiesPending"),
         f"{available}/{total} nodes have the model"),
        ("DownloadFailed", bool(failed), "NodeDownloadError" if failed else "NoErrors",
         "; ".join(f"{n}: {errors.get(n, 'download failed')}" for n in failed)[:1024]),
    ]
    previous = {c.get("type"): c for c in old}
    out = []
    for ctype, ok, reason, message in wanted:
        status = "True" if ok else "False"
        before = previous.get(ctype) or {}
        since = before.get("lastTransitionTime") if before.get("status") == status else None
        condition = {"type": ctype, "status": status, "reason": reason, "lastTransitionTime": since or now_iso()}
        if message:  # omitempty: the client would send "" as null, which the schema refuses
            condition["message"] = message
        out.append(condition)
    return out


def same_conditions(a: list[dict], b: list[dict]) -> bool:
    def strip(cs):
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in cs or []]
    return strip(a) == strip(b)


def node_report(records, usage, states: dict[str, CacheState], verification: dict | None) -> dict:
    """The LocalModelNode status: what is on this node's disk and how full it is."""
    owners: dict[str, list[str]] = {}
    for name, st in states.items():
        if st.key:
            owners.setdefault(st.key, []).append(name)
    models = []
    for r in sorted(records, key=lambda r: r.key):
        models.append({
            "key": r.key,
            "sourceModelUri": redact_uri(r.uri) if r.uri else "",
            "state": r.state,
            "bytes": int(r.bytes or 0),
            "files": int(r.files or 0),
            "pinnedBy": sorted(r.pinned_by),
            "lastUsed": iso(r.last_used),
        })
        models[-1] = {k: v for k, v in models[-1].items() if v not in (None, "")}
    report = {
        "capacity": int(usage.capacity) if usage.capacity is not None else None,
        "used": int(usage.used),
        "available": int(usage.available),
        "modelStatus": {name: _MODEL_STATE.get(st.state, st.state) for name, st in sorted(states.items())},
        "models": models,
    }
    if verification:
        report["lastVerification"] = verification
    return {k: v for k, v in report.items() if v is not None}


def local_models(states: dict[str, CacheState]) -> list[dict]:
    """LocalModelNode ``spec.localModels`` (KServe's shape): what this node is asked to hold."""
    return [{"sourceModelUri": redact_uri(st.uri), "modelName": name}
            for name, st in sorted(states.items()) if st.uri]
