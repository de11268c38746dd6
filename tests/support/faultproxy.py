"""An HTTP reverse proxy that injects faults, for testing retries against real servers.

``FaultProxy(upstream)`` listens on 127.0.0.1 and forwards every request to ``upstream`` (a base
URL such as ``http://127.0.0.1:8333``), keeping the client's Host header so signed requests (S3
SigV4) still verify. A fault plan decides, per request, whether to misbehave instead:

    with FaultProxy(server.endpoint) as proxy:
        proxy.add(Fault.status(503, method="GET", path=r"/bucket/model/a\\.bin$", count=2))
        proxy.add(Fault.reset(after=1 << 20, path=r"\\.bin$"))
        ...
        assert proxy.requests_for(r"a\\.bin$")[-1].range_start == 1 << 20

Fault kinds:
- ``status``: answer ``code`` (500/503/429/403/404...) with an optional body and headers.
- ``reset``: forward the headers and ``after`` body bytes, then reset the connection (RST via
  SO_LINGER 0).
- ``truncate``: forward the headers (with the full Content-Length) and ``after`` body bytes, then
  close cleanly, so the client sees a short body.
- ``stall``: forward the headers and ``after`` body bytes, sleep ``seconds``, then carry on.
- ``corrupt``: forward the whole response with one byte flipped at body offset ``after``.
- ``hang``: accept the request and send nothing at all for ``seconds`` (then carry on).
- ``chunked``: forward the response without Content-Length, chunk-encoded (size unknown upfront).

Each fault matches on method, a regex searched in the path (query excluded unless
``match_query``), an optional predicate on the request, skips its first ``skip`` matches and then
fires ``count`` times. Every request is recorded (:class:`Record`) with its Range header, the
fault applied, the status, body bytes sent and timing.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
_RANGE_START = re.compile(r"bytes=(\d+)-(\d*)")


class _QuietServer(ThreadingHTTPServer):
    """Clients hanging up mid-request is routine in these tests, not worth a traceback."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, OSError)):
            super().handle_error(request, client_address)


@dataclass
class Record:
    """One request the proxy received."""

    method: str
    path: str  # percent-decoded, without the query
    query: str
    headers: dict[str, str]  # lower-cased names
    started: float
    fault: str | None = None
    status: int | None = None
    bytes_sent: int = 0
    complete: bool = False  # the whole upstream body reached the client
    finished: float | None = None

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def range_start(self) -> int | None:
        m = _RANGE_START.match(self.range or "")
        return int(m.group(1)) if m else None

    @property
    def range_end(self) -> int | None:
        """Inclusive end of the requested range, None when open-ended or absent."""
        m = _RANGE_START.match(self.range or "")
        return int(m.group(2)) if m and m.group(2) else None


@dataclass
class Fault:
    kind: str
    method: str | None = None
    path: str | None = None
    count: int = 1
    skip: int = 0
    code: int = 503
    after: int = 0
    seconds: float = 0.0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    match_query: bool = False
    when: Callable[[Record], bool] | None = None
    matched: int = 0  # requests that matched so far (skipped ones included)
    fired: int = 0

    # Constructors read better in tests than the raw dataclass.
    @classmethod
    def status(cls, code: int, *, body: bytes = b"", headers: dict | None = None, **kw) -> Fault:
        return cls("status", code=code, body=body, headers=dict(headers or {}), **kw)

    @classmethod
    def reset(cls, after: int, **kw) -> Fault:
        return cls("reset", after=after, **kw)

    @classmethod
    def truncate(cls, after: int, **kw) -> Fault:
        return cls("truncate", after=after, **kw)

    @classmethod
    def stall(cls, after: int, seconds: float, **kw) -> Fault:
        return cls("stall", after=after, seconds=seconds, **kw)

    @classmethod
    def hang(cls, seconds: float, **kw) -> Fault:
        return cls("hang", seconds=seconds, **kw)

    @classmethod
    def chunked(cls, **kw) -> Fault:
        return cls("chunked", **kw)

    @classmethod
    def corrupt(cls, at: int = 0, **kw) -> Fault:
        return cls("corrupt", after=at, **kw)

    def _matches(self, rec: Record) -> bool:
        if self.method and rec.method != self.method.upper():
            return False
        if self.path:
            target = rec.path + ("?" + rec.query if self.match_query and rec.query else "")
            if not re.search(self.path, target):
                return False
        return self.when is None or bool(self.when(rec))


def s3_error(code: str, message: str = "") -> bytes:
    """An S3-style XML error body, for status faults in front of S3."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message or code}</Message><RequestId>fault</RequestId></Error>"
    ).encode()


class FaultProxy:
    """The proxy server. Thread-safe; ``stop()`` (or leaving the ``with``) ends stalls at once."""

    def __init__(self, upstream: str, *, timeout: float = 60.0):
        parts = urlsplit(upstream)
        if parts.scheme != "http":
            raise ValueError("FaultProxy forwards to http:// upstreams only")
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.upstream_prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.faults: list[Fault] = []
        self.records: list[Record] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    # -- plan -------------------------------------------------------------------------------
    def add(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _choose(self, rec: Record) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.fired >= f.count or not f._matches(rec):
                    continue
                f.matched += 1
                if f.matched <= f.skip:
                    continue
                f.fired += 1
                return f
        return None

    # -- log --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Record]:
        with self.lock:
            return list(self.records)

    def requests_for(self, path_regex: str, method: str | None = "GET") -> list[Record]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and re.search(path_regex, r.path)
        ]

    def clear_log(self) -> None:
        with self.lock:
            self.records.clear()

    def _record(self, rec: Record) -> None:
        with self.lock:
            self.records.append(rec)

    # -- lifecycle --------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _proxy(self) -> None:
        owner = self.owner
        parts = urlsplit(self.path)
        rec = Record(
            method=self.command,
            path=unquote(parts.path),
            query=parts.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            started=time.monotonic(),
        )
        owner._record(rec)
        body = self._request_body()
        fault = owner._choose(rec)
        rec.fault = fault.kind if fault else None
        try:
            if fault is not None and fault.kind == "status":
                self._send_status(rec, fault)
                return
            if fault is not None and fault.kind == "hang" and owner.stopping.wait(fault.seconds):
                self._abort(reset=False)
                return
            self._forward(rec, fault, body)
        except (TimeoutError, BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        finally:
            rec.finished = time.monotonic()

    def _request_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length:
            return self.rfile.read(int(length))
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return None

    def _send_status(self, rec: Record, fault: Fault) -> None:
        rec.status = fault.code
        self.send_response(fault.code)
        headers = {"Content-Type": "application/xml" if fault.body.startswith(b"<?xml") else "text/plain"}
        headers.update(fault.headers)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(fault.body)))
        self.end_headers()
        if self.command != "HEAD" and fault.body:
            self.wfile.write(fault.body)

    def _forward(self, rec: Record, fault: Fault | None, body: bytes | None) -> None:
        owner = self.owner
        conn = http.client.HTTPConnection(owner.upstream_host, owner.upstream_port, timeout=owner.timeout)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body is not None:
                headers["Content-Length"] = str(len(body))
                headers.pop("Transfer-Encoding", None)
            conn.putrequest(
                self.command, owner.upstream_prefix + self.path, skip_host=True, skip_accept_encoding=True
            )
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            rec.status = resp.status
            length = resp.getheader("Content-Length")
            unsized = fault is not None and fault.kind == "chunked"
            chunked = (length is None or unsized) and self.command != "HEAD" and resp.status not in (204, 304)
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP and not (unsized and k.lower() == "content-length"):
                    self.send_header(k, v)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command == "HEAD":
                rec.complete = True
                return
            self._pump(rec, resp, fault, chunked)
        finally:
            conn.close()

    def _write(self, data: bytes, chunked: bool) -> None:
        if chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.wfile.write(data)

    def _pump(self, rec: Record, resp: http.client.HTTPResponse, fault: Fault | None, chunked: bool) -> None:
        kind = fault.kind if fault else None
        limit = fault.after if kind in ("reset", "truncate", "stall") else None
        while True:
            want = 1 << 16
            if limit is not None and rec.bytes_sent < limit:
                want = min(want, limit - rec.bytes_sent)
            data = resp.read(want) if limit is None or rec.bytes_sent < limit else b""
            if limit is not None and rec.bytes_sent >= limit:
                if kind == "stall":
                    self.wfile.flush()
                    owner_stop = self.owner.stopping
                    if owner_stop.wait(fault.seconds):
                        self._abort(reset=False)
                        return
                    limit = None  # carry on with the rest of the body
                    continue
                self.wfile.flush()
                if kind == "reset":
                    time.sleep(0.1)  # let the client read what was sent before the RST discards it
                self._abort(reset=kind == "reset")
                return
            if not data:
                break
            if kind == "corrupt" and rec.bytes_sent <= fault.after < rec.bytes_sent + len(data):
                i = fault.after - rec.bytes_sent
                data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
            self._write(data, chunked)
            rec.bytes_sent += len(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        rec.complete = True

    def _abort(self, reset: bool) -> None:
        """End the connection mid-body: RST when ``reset``, else an ordinary FIN."""
        self.close_connection = True
        sock = self.connection
        try:
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass
