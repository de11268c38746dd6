"""Shared fixtures: a real S3 server (SeaweedFS), a local HTTP file server, the fault proxy.

Everything listens on 127.0.0.1 and is stopped by the fixture that started it. Library calls get
their configuration through ``download(..., env=...)``; CLI subprocesses get a scrubbed copy of
the environment plus the same values (see ``cli_env``). Nothing here mutates ``os.environ``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.faultproxy import FaultProxy
from support.httpserver import HTTPFileServer
from support.s3server import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3

REPO = Path(__file__).resolve().parents[1]

# The kube-apiserver fixtures (cluster, kube, agents), registered here so pytest rewrites their
# asserts before any test module imports helpers from them.
pytest_plugins = ["k8s.fixtures"]

# Engine knobs that keep failure tests fast: tiny backoff, short stall timeout, few attempts.
FAST_RETRY_ENV = {
    "MODELDEPOT_BACKOFF_BASE": "0.01",
    "MODELDEPOT_RETRIES": "4",
    "MODELDEPOT_STALL_TIMEOUT": "2",
    "MODELDEPOT_PROGRESS_INTERVAL": "3600",
}


def s3_env_for(endpoint: str, **extra: str) -> dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        **FAST_RETRY_ENV,
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_server):
    return s3_server.client()


@pytest.fixture
def bucket(s3_client):
    """A fresh, empty bucket per test."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(s3_server):
    """``download(env=...)`` for the S3 server, direct (no proxy)."""
    return s3_env_for(s3_server.endpoint)


@pytest.fixture
def fault_proxy():
    """Factory: ``fault_proxy(upstream_url)`` -> a started FaultProxy, stopped after the test."""
    started: list[FaultProxy] = []

    def make(upstream: str) -> FaultProxy:
        proxy = FaultProxy(upstream)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def s3_proxy(s3_server, fault_proxy):
    """A FaultProxy in front of the S3 server."""
    return fault_proxy(s3_server.endpoint)


@pytest.fixture
def http_server(tmp_path):
    """An HTTPFileServer serving ``tmp_path / "www"``."""
    root = tmp_path / "www"
    root.mkdir()
    with HTTPFileServer(root) as server:
        yield server


@pytest.fixture
def http_server_factory(tmp_path):
    started: list[HTTPFileServer] = []

    def make(
        root: Path, required_headers: dict[str, str] | None = None, *, ranges: bool = True
    ) -> HTTPFileServer:
        server = HTTPFileServer(root, required_headers, ranges=ranges)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# -- CLI helpers ---------------------------------------------------------------------------


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment minus cloud credentials/config, plus ``extra``."""
    drop = ("AWS_", "S3_", "GOOGLE_", "AZURE_", "HF_", "MODELDEPOT_", "STORAGE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and not k.endswith("-headers")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(FAST_RETRY_ENV)
    env.update(extra or {})
    return env


def cli_argv(name: str) -> list[str]:
    """How to run one of our console scripts: the installed one, else through this Python."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module = {"storage-initializer": "initializer.cli", "modeldepot": "initializer.app"}[name]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


def run_cli(
    name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cli_argv(name), *args],
        env=cli_env(env),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def object_gets(proxy, bucket: str, key_regex: str = r".+") -> list:
    """GETs of object data through ``proxy`` (listing requests excluded), path-style S3."""
    import re

    out = []
    for r in proxy.requests:
        if r.method != "GET" or "list-type" in r.query or "prefix=" in r.query or "delimiter" in r.query:
            continue
        m = re.match(rf"^/{re.escape(bucket)}/(.+)$", r.path)
        if m and re.search(key_regex, m.group(1)):
            out.append(r)
    return out


def requested_bytes(records, size: int) -> int:
    """Bytes the client asked for across ``records`` (a GET without Range asks for all)."""
    total = 0
    for r in records:
        start = r.range_start or 0
        end = r.range_end + 1 if r.range_end is not None else size
        total += max(0, min(end, size) - start)
    return total
