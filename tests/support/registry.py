"""Real registries for the OCI tests: Debian's ``docker-registry`` and a misbehaving proxy.

``DockerRegistry(tmp)`` runs the CNCF distribution registry on a free 127.0.0.1 port with
filesystem storage under ``tmp`` (optionally htpasswd basic auth). ``RegistryProxy`` sits in
front of it and imitates what users meet in the wild: bearer-token auth, a cap on request bodies
(GHCR), refused chunked uploads (Google Artifact Registry), 201 answers to PATCH (ECR), relative
``Location`` headers, ``OCI-Chunk-Min-Length``, and a connection dropped halfway through a PATCH
after the registry received part of the chunk. Everything it saw is in ``proxy.log``.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import shutil
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from support.procs import ManagedProcess, free_port

USER, PASSWORD = "modeler", "s3cret-pw"


class DockerRegistry:
    def __init__(self, tmp: Path, *, htpasswd: bool = False):
        if shutil.which("docker-registry") is None:
            raise RuntimeError("docker-registry is not installed (Debian package docker-registry)")
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        auth = ""
        if htpasswd:
            pw_file = self.tmp / "htpasswd"
            line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True)
            pw_file.write_text(line.stdout.strip() + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {pw_file}\n"
        config = self.tmp / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.tmp / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n  secret: not-a-secret-test-only\n" + auth
        )
        self.proc = ManagedProcess(["docker-registry", "serve", str(config)], self.tmp / "registry.log")
        try:
            self.proc.wait_port(self.port)
        except BaseException:
            self.proc.stop()
            raise

    def stop(self) -> None:
        self.proc.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@dataclass
class Seen:
    method: str
    path: str
    query: str
    length: int
    content_range: str | None = None
    status: int | None = None


@dataclass
class ProxyBehaviour:
    bearer: bool = False               # demand a token from our /token endpoint (basic creds)
    max_body: int | None = None        # 413 for larger request bodies (GHCR)
    refuse_chunks: bool = False        # 400 to any PATCH with Content-Range (GAR)
    patch_201: bool = False            # answer PATCH with 201 (ECR)
    relative_location: bool = False    # strip scheme://host from Location headers
    chunk_min_length: int | None = None
    drop_patch: set[int] = field(default_factory=set)  # these PATCHes (1-based) lose their second half
    lose_patch: set[int] = field(default_factory=set)  # these PATCHes never reach the registry


class RegistryProxy:
    def __init__(self, upstream_port: int, behaviour: ProxyBehaviour | None = None):
        self.upstream_port = upstream_port
        self.behaviour = behaviour or ProxyBehaviour()
        self.log: list[Seen] = []
        self.tokens: set[str] = set()
        self.patches = 0
        self._lock = threading.Lock()
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def seen(self, method: str | None = None) -> list[Seen]:
        return [s for s in self.log if method is None or s.method == method]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    owner: RegistryProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _handle(self) -> None:
        p = self.owner
        b = p.behaviour
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.command, parts.path, parts.query, length, self.headers.get("Content-Range"))
        with p._lock:
            p.log.append(seen)
        if parts.path == "/token":
            return self._token(seen)
        if b.bearer and parts.path.startswith("/v2") and not self._has_token():
            scope = ""
            if "/blobs/" in parts.path or "/manifests/" in parts.path:
                repo = parts.path[4:].split("/blobs/")[0].split("/manifests/")[0]
                scope = f',scope="repository:{repo}:pull,push"'
            challenge = f'Bearer realm="http://{p.host}/token",service="test-registry"{scope}'
            return self._reply(seen, 401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
        if b.max_body is not None and length > b.max_body:
            return self._reply(seen, 413, {}, b"request entity too large")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "authorization")}
        if self.command == "PATCH":
            with p._lock:
                p.patches += 1
                n = p.patches
            if b.refuse_chunks and "Content-Range" in self.headers:
                return self._reply(seen, 400, {}, b'{"errors":[{"code":"UNSUPPORTED","message":"no chunks"}]}')
            if n in b.lose_patch:
                seen.status = -1
                self._reset()
                return
            if n in b.drop_patch and length > 1:
                half = length // 2
                start = int(self.headers["Content-Range"].split("-")[0]) if "Content-Range" in self.headers else 0
                headers["Content-Length"] = str(half)
                headers["Content-Range"] = f"{start}-{start + half - 1}"
                self._forward(headers, body[:half])  # the registry keeps the first half...
                seen.status = -1
                self._reset()  # ...and the client sees its connection die
                return
        status, rheaders, rbody = self._forward(headers, body)
        if self.command == "PATCH" and b.patch_201 and status == 202:
            status = 201
        if b.chunk_min_length and self.command == "POST" and status == 202:
            rheaders["OCI-Chunk-Min-Length"] = str(b.chunk_min_length)
        if b.relative_location and "Location" in rheaders:
            loc = urlsplit(rheaders["Location"])
            rheaders["Location"] = loc.path + (f"?{loc.query}" if loc.query else "")
        self._reply(seen, status, rheaders, rbody)

    def _has_token(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.owner.tokens

    def _token(self, seen: Seen) -> None:
        auth = self.headers.get("Authorization", "")
        want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if auth != want:
            return self._reply(seen, 401, {}, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
        token = secrets.token_hex(16)
        self.owner.tokens.add(token)
        self._reply(seen, 200, {"Content-Type": "application/json"}, json.dumps({"token": token}).encode())

    def _forward(self, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.owner.upstream_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            rheaders = {k: v for k, v in resp.getheaders() if k.lower() not in ("connection", "transfer-encoding",
                                                                               "content-length")}
            return resp.status, rheaders, data
        finally:
            conn.close()

    def _reply(self, seen: Seen, status: int, headers: dict, body: bytes) -> None:
        seen.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _reset(self) -> None:
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
