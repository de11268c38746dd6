"""A small threaded static file server for tests: Range, HEAD, ETag, Content-Length, optional auth.

Serves files under ``root`` (honouring If-Match -> 412 and If-Range -> 200 on a changed ETag) at ``http://127.0.0.1:PORT/<relative path>`` (query strings are
ignored for lookup but recorded). Bodies go out with ``os.sendfile`` so multi-GB files cost no
Python-side copying. ``required_headers`` turns on auth: a request missing one of them gets 401, a
request with a wrong value gets 403. ``ranges=False`` plays a server that ignores Range (always
200 with the whole body, no Accept-Ranges). Every request is recorded in ``requests``.
"""

from __future__ import annotations

import email.utils
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _QuietServer(ThreadingHTTPServer):
    """Clients hanging up mid-request is routine in these tests, not worth a traceback."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, OSError)):
            super().handle_error(request, client_address)


@dataclass
class Served:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    status: int = 0

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def range_start(self) -> int | None:
        m = _RANGE.match(self.range or "")
        return int(m.group(1)) if m and m.group(1) else None

    @property
    def range_end(self) -> int | None:
        m = _RANGE.match(self.range or "")
        return int(m.group(2)) if m and m.group(1) and m.group(2) else None


@dataclass
class _State:
    root: Path
    required_headers: dict[str, str] = field(default_factory=dict)
    ranges: bool = True
    requests: list[Served] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "modeldepot-test-http"
    state: _State  # set on the subclass per server

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        parts = urlsplit(self.path)
        rec = Served(
            self.command, unquote(parts.path), parts.query, {k.lower(): v for k, v in self.headers.items()}
        )
        with self.state.lock:
            self.state.requests.append(rec)
        for name, want in self.state.required_headers.items():
            got = self.headers.get(name)
            if got is None:
                return self._status(rec, 401, b"missing credentials\n")
            if got != want:
                return self._status(rec, 403, b"forbidden\n")
        root = self.state.root.resolve()
        target = (root / rec.path.lstrip("/")).resolve()
        if root not in target.parents or not target.is_file():
            return self._status(rec, 404, b"not found\n")
        st = target.stat()
        etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
        size = st.st_size
        start, end = 0, size  # [start, end)
        status = 200
        if_match = self.headers.get("If-Match")
        if if_match and if_match.strip() != "*" and etag not in [t.strip() for t in if_match.split(",")]:
            return self._status(rec, 412, b"precondition failed\n")
        rng = self.headers.get("Range") if self.state.ranges else None
        if_range = self.headers.get("If-Range")
        if rng and if_range and if_range.strip() != etag:
            rng = None  # RFC 9110: a changed representation is sent whole, with 200
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return self._status(rec, 416, b"bad range\n", {"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            else:  # suffix range: the last N bytes
                start = max(0, size - int(m.group(2)))
            if start >= size or start >= end:
                return self._status(
                    rec, 416, b"range not satisfiable\n", {"Content-Range": f"bytes */{size}"}
                )
            status = 206
        rec.status = status
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        if self.state.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not body:
            return
        with open(target, "rb") as fh:
            offset, remaining = start, end - start
            sock = self.connection
            try:
                while remaining > 0:
                    sent = os.sendfile(sock.fileno(), fh.fileno(), offset, min(remaining, 1 << 24))
                    if sent == 0:
                        break
                    offset += sent
                    remaining -= sent
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _status(self, rec: Served, code: int, body: bytes, headers: dict | None = None) -> None:
        rec.status = code
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class HTTPFileServer:
    """Serve ``root`` on 127.0.0.1 until ``stop()``; use as a context manager."""

    def __init__(
        self, root: str | os.PathLike, required_headers: dict[str, str] | None = None, *, ranges: bool = True
    ):
        self.state = _State(Path(root), dict(required_headers or {}), ranges)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def root(self) -> Path:
        return self.state.root

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, rel: str) -> str:
        return f"{self.base_url}/{rel.lstrip('/')}"

    @property
    def required_headers(self) -> dict[str, str]:
        return self.state.required_headers

    @property
    def requests(self) -> list[Served]:
        with self.state.lock:
            return list(self.state.requests)

    def clear(self) -> None:
        with self.state.lock:
            self.state.requests.clear()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
