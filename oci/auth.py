"""Registry credentials and auth challenges.

Credentials come, first match wins, from: an explicit username/password (``--username`` with
``--password-stdin``), ``REGISTRY_AUTH_FILE`` (podman/skopeo), ``KSERVE_OCI_DOCKER_CONFIG``
(KServe's name, for the oci:// source), ``$DOCKER_CONFIG/config.json``, ``~/.docker/config.json``.
A config.json entry may hold ``auth`` (base64 user:password), ``username``/``password``, or name a
``credsStore``/``credHelpers`` helper (``docker-credential-<name> get``).
Secrets live only in a :class:`Credentials`, whose repr hides them.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:  # never print the password, even in a traceback
        return f"Credentials(username={self.username!r}, password=***)"


def config_files(env: Mapping[str, str]) -> list[Path]:
    """Auth files to look in, in order of precedence."""
    paths = []
    for var in ("REGISTRY_AUTH_FILE", "KSERVE_OCI_DOCKER_CONFIG"):
        if env.get(var):
            p = Path(env[var])
            # KServe mounts a secret directory holding .dockerconfigjson or config.json.
            if p.is_dir():
                paths += [p / "config.json", p / ".dockerconfigjson"]
            else:
                paths.append(p)
    if env.get("DOCKER_CONFIG"):
        paths.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    home = env.get("HOME") or str(Path.home())
    paths.append(Path(home) / ".docker" / "config.json")
    return paths


def lookup(host: str, env: Mapping[str, str]) -> Credentials | None:
    """Credentials for registry ``host`` (``name[:port]``) from the first file that has some."""
    for path in config_files(env):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        creds = _from_config(data, host)
        if creds is not None:
            return creds
    return None


def _host_key(key: str) -> str:
    key = re.sub(r"^[a-z]+://", "", key.strip())
    return key.split("/", 1)[0]


def _from_config(data: dict, host: str) -> Credentials | None:
    wanted = {host}
    if host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        wanted |= {_host_key(k) for k in DOCKER_HUB_KEYS}
    helper = (data.get("credHelpers") or {}).get(host)
    for key, entry in (data.get("auths") or {}).items():
        if _host_key(key) in wanted and isinstance(entry, dict):
            if entry.get("auth"):
                try:
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    continue
                return Credentials(user, password)
            if entry.get("username"):
                return Credentials(entry["username"], entry.get("password", ""))
    helper = helper or data.get("credsStore")
    return _from_helper(helper, host) if helper else None


def _from_helper(helper: str, host: str) -> Credentials | None:
    try:
        out = subprocess.run([f"docker-credential-{helper}", "get"], input=host, capture_output=True,
                             text=True, timeout=30, check=True)
        data = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if data.get("Username") and data.get("Secret"):
        return Credentials(data["Username"], data["Secret"])
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="...",scope="..."`` → ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    for k, v in re.findall(r'(\w+)=([^",\s]+)', rest):
        params.setdefault(k.lower(), v)
    return scheme.lower(), params
