"""Every tunable the engine reads from the environment, in one place, with its default.

| variable                        | default | meaning                                               |
|---------------------------------|---------|-------------------------------------------------------|
| MODELDEPOT_CONCURRENCY          | 16      | connections at once for one download                  |
| MODELDEPOT_PART_SIZE            | 32Mi    | files larger than this are fetched in ranged parts     |
| MODELDEPOT_RETRIES              | 8       | attempts per part for transient failures               |
| MODELDEPOT_BACKOFF_BASE         | 0.5     | first backoff in seconds (doubles, full jitter, cap 30)|
| MODELDEPOT_STALL_TIMEOUT        | 60      | seconds without a byte before a read is retried        |
| MODELDEPOT_CONNECT_TIMEOUT      | 20      | seconds to connect                                     |
| MODELDEPOT_PROGRESS_INTERVAL    | 5       | seconds between progress log lines without a TTY       |
| MODELDEPOT_FSYNC                | 0       | 1: fdatasync every file before publishing, so DEST survives a power loss. 0: no sync; the manifest records the boot it was written in, and a run in a later boot re-hashes DEST before trusting it |
| MODELDEPOT_PVC_ROOT             | /mnt/pvc| where pvc://NAME/PATH volumes are mounted (KServe's)   |
| STORAGE_ALLOW_PATTERNS          |         | KServe: globs to keep (JSON list or comma-separated)   |
| STORAGE_IGNORE_PATTERNS         |         | KServe: globs to drop (JSON list or comma-separated)   |

Scheme-specific variables (AWS_*, S3_*, <host>-headers, …) are read by their source modules.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from storage.errors import BadURIError

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_size(text: str | int) -> int:
    """Bytes from ``123``, ``32Mi``, ``500Gi``, ``1G``, ``64MB`` (Kubernetes quantity style)."""
    if isinstance(text, int):
        return text
    raw = str(text).strip()
    s = raw.lower().removesuffix("b") if raw.lower().endswith(("kb", "mb", "gb", "tb")) else raw.lower()
    num = s.rstrip("kmgti")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise BadURIError(f"size {raw!r} is not a number with an optional unit like 32Mi or 500Gi") from None
    if unit not in _UNITS or value < 0:
        raise BadURIError(f"size {raw!r} has an unknown unit; use Ki, Mi, Gi, Ti (or k, M, G, T)")
    return int(value * _UNITS[unit])


def parse_patterns(value: str | None) -> list[str]:
    """KServe's pattern lists: a JSON list, or comma-separated globs."""
    if not value or not value.strip():
        return []
    value = value.strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            raise BadURIError(f"pattern list {value!r} is not valid JSON; use [\"*.bin\"] or a,b") from None
        return [str(i) for i in items if str(i)]
    return [p.strip() for p in value.split(",") if p.strip()]


def json_object_env(env: Mapping[str, str], name: str, expected: str) -> dict:
    """The JSON object in variable ``name`` ({} when unset or blank); BadURIError saying
    ``expected`` when it is not one. The value itself is never echoed: it may hold secrets."""
    raw = env.get(name)
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise BadURIError(f"{name} is not {expected}")
    return value


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    concurrency: int = 16
    part_size: int = 32 * 1024 * 1024
    retries: int = 8
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    stall_timeout: float = 60.0
    connect_timeout: float = 20.0
    progress_interval: float = 5.0
    fsync: bool = False
    pvc_root: str = "/mnt/pvc"
    allow_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def num(name, default, cast):
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = cast(raw)
            except ValueError:
                raise BadURIError(f"{name}={raw!r} is not a number") from None
            if value <= 0 and name != "MODELDEPOT_BACKOFF_BASE":
                raise BadURIError(f"{name}={raw!r} must be greater than 0")
            return value

        return cls(
            concurrency=num("MODELDEPOT_CONCURRENCY", cls.concurrency, int),
            part_size=num("MODELDEPOT_PART_SIZE", cls.part_size, parse_size),
            retries=num("MODELDEPOT_RETRIES", cls.retries, int),
            backoff_base=num("MODELDEPOT_BACKOFF_BASE", cls.backoff_base, float),
            stall_timeout=num("MODELDEPOT_STALL_TIMEOUT", cls.stall_timeout, float),
            connect_timeout=num("MODELDEPOT_CONNECT_TIMEOUT", cls.connect_timeout, float),
            progress_interval=num("MODELDEPOT_PROGRESS_INTERVAL", cls.progress_interval, float),
            fsync=_flag(env.get("MODELDEPOT_FSYNC"), cls.fsync),
            pvc_root=env.get("MODELDEPOT_PVC_ROOT") or cls.pvc_root,
            allow_patterns=tuple(parse_patterns(env.get("STORAGE_ALLOW_PATTERNS"))),
            ignore_patterns=tuple(parse_patterns(env.get("STORAGE_IGNORE_PATTERNS"))),
        )
