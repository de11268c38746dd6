"""A small Hugging Face Hub for tests, speaking the HTTP API that ``huggingface_hub`` uses.

    hub = HubServer()
    sha = hub.commit("org/model", {"config.json": b"{}", "model.safetensors": weights}, ref="main")
    ...  # HF_ENDPOINT=hub.url
    hub.stop()

What it serves, with the headers and error codes of the real Hub:
- ``GET /api/models/{repo}[/revision/{rev}][?blobs=true]``: ``id``, ``sha``, ``siblings``
  (``rfilename``; with ``blobs=true`` also ``size``, ``blobId`` and ``lfs`` {sha256,size,pointerSize}).
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=&expand=``: entries ``{type, oid, size,
  path[, lfs{oid,size,pointerSize}]}``, paginated with a ``Link: <…>; rel="next"`` header
  (``page_size`` entries a page).
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: small files answer 200 with ``ETag`` (git blob id),
  ``X-Repo-Commit``, ``Accept-Ranges``; LFS files answer 302 to ``{cdn_base}/lfs-cdn/{sha256}`` (a second port) with
  ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``, like the Hub's CDN redirect. Range
  requests get 206 / 416.
- Errors: 404 ``X-Error-Code: RevisionNotFound`` / ``EntryNotFound``; ``RepoNotFound`` as 401
  without a token and 404 with one (as the Hub does, so private repos are not revealed); a gated
  repo's files answer 401 ``GatedRepo`` without a token, 403 with a token that has no access;
  an unknown token gets 401 "Invalid credentials in Authorization header".

Files at or above ``lfs_threshold`` bytes (or ``*.safetensors`` / ``*.bin``) are LFS files.
Every request is recorded in ``requests`` (method, path, headers).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class HubFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def blob_id(self) -> str:
        """The git blob id: of the content, or of the LFS pointer for LFS files."""
        body = self.pointer if self.lfs else self.data
        return hashlib.sha1(b"blob %d\x00" % len(body) + body).hexdigest()


@dataclass
class HubRepo:
    repo_id: str
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    private: bool = False
    readers: set[str] = field(default_factory=set)  # tokens allowed into a gated/private repo


class HubServer:
    def __init__(self, *, lfs_threshold: int = 10_000, page_size: int = 50):
        self.repos: dict[str, HubRepo] = {}
        self.tokens: set[str] = set()  # every token the hub knows
        self.lfs_threshold = lfs_threshold
        self.page_size = page_size
        self.requests: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(_HubHandler):
            owner = hub

        # The LFS "CDN" listens on its own port: a different origin, as on the real Hub, so clients
        # stop following there for metadata and must not forward the Authorization header to it.
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.cdn_httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.cdn_port = self.cdn_httpd.server_address[1]
        self.cdn_base = f"http://127.0.0.1:{self.cdn_port}"  # where LFS redirects point (a proxy may go here)
        self._threads = []
        for httpd in (self.httpd, self.cdn_httpd):
            httpd.daemon_threads = True
            t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def commit(self, repo_id: str, files: dict[str, bytes], *, ref: str | None = "main", gated: bool = False,
               private: bool = False, readers: set[str] | None = None) -> str:
        """Add a commit holding exactly ``files``; point ``ref`` at it; return its sha."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, HubRepo(repo_id))
            repo.gated = repo.gated or gated
            repo.private = repo.private or private
            repo.readers |= set(readers or ())
            self.tokens |= set(readers or ())
            tree = {p: HubFile(d, len(d) >= self.lfs_threshold or p.endswith((".safetensors", ".bin")))
                    for p, d in files.items()}
            digest = hashlib.sha1(repr(sorted((p, f.blob_id) for p, f in tree.items())).encode()
                                  + str(len(repo.commits)).encode()).hexdigest()
            repo.commits[digest] = tree
            if ref:
                repo.refs[ref] = digest
            return digest

    def add_token(self, token: str) -> None:
        self.tokens.add(token)

    def stop(self) -> None:
        for httpd in (self.httpd, self.cdn_httpd):
            httpd.shutdown()
            httpd.server_close()
        for t in self._threads:
            t.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: HubServer

    def log_message(self, format, *args):  # noqa: A002
        pass

    # -- plumbing --------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _json(self, value, headers: dict | None = None):
        self._send(200, json.dumps(value).encode(), headers)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else None

    # -- routing ---------------------------------------------------------------------------------
    def do_GET(self):
        owner = self.owner
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        with owner.lock:
            owner.requests.append((self.command, path, dict(self.headers.items())))
        token = self._token()
        if token is not None and token not in owner.tokens and self.server is not owner.cdn_httpd:
            return self._error(401, None, "Invalid credentials in Authorization header")
        if self.server is owner.cdn_httpd:
            if path.startswith("/lfs-cdn/"):
                return self._cdn(path[len("/lfs-cdn/"):])
            return self._error(404, None, "Not Found")
        if path.startswith("/api/models/"):
            return self._api(path[len("/api/models/"):], query, token)
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            return self._resolve(m.group(1), m.group(2), m.group(3), token)
        self._error(404, None, "Not Found")

    do_HEAD = do_GET

    def _repo(self, repo_id: str, token: str | None) -> HubRepo | None:
        repo = self.owner.repos.get(repo_id)
        if repo is None or (repo.private and token not in repo.readers):
            if token is None:
                self._error(401, "RepoNotFound", "Repository not found")
            else:
                self._error(404, "RepoNotFound", "Repository not found")
            return None
        return repo

    def _commit(self, repo: HubRepo, rev: str) -> str | None:
        sha = repo.refs.get(rev) or (rev if rev in repo.commits else None)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha

    def _api(self, rest: str, query: dict, token: str | None):
        owner = self.owner
        m = re.match(r"^([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?$", rest)
        if not m:
            return self._error(404, None, "Not Found")
        repo_id, kind, rev, sub = m.group(1), m.group(2), m.group(3) or "main", (m.group(4) or "").strip("/")
        repo = self._repo(repo_id, token)
        if repo is None:
            return
        sha = self._commit(repo, rev)
        if sha is None:
            return
        tree = repo.commits[sha]
        if kind in (None, "revision"):
            blobs = query.get("blobs", [""])[0].lower() in ("1", "true")
            siblings = []
            for p, f in sorted(tree.items()):
                s = {"rfilename": p}
                if blobs:
                    s.update(size=len(f.data), blobId=f.blob_id)
                    if f.lfs:
                        s["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
                siblings.append(s)
            return self._json({"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": sha,
                               "private": repo.private, "gated": "auto" if repo.gated else False,
                               "disabled": False, "tags": [], "siblings": siblings})
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = self._tree_entries(tree, sub, recursive)
        if entries is None:
            return self._error(404, "EntryNotFound", f"{sub} does not exist on {rev}")
        start = int(query.get("cursor", ["0"])[0] or 0)
        page = entries[start:start + owner.page_size]
        headers = {}
        if start + owner.page_size < len(entries):
            host = self.headers.get("Host", f"127.0.0.1:{owner.port}")
            q = f"recursive={str(recursive).lower()}&expand=false&cursor={start + owner.page_size}"
            sub_part = "/" + quote(sub) if sub else ""
            headers["Link"] = f'<http://{host}/api/models/{repo_id}/tree/{quote(rev, safe="")}{sub_part}?{q}>; rel="next"'
        return self._json(page, headers)

    @staticmethod
    def _tree_entries(tree: dict[str, HubFile], sub: str, recursive: bool) -> list[dict] | None:
        prefix = sub + "/" if sub else ""
        if sub and not any(p.startswith(prefix) for p in tree):
            return None
        out: dict[str, dict] = {}
        for p, f in sorted(tree.items()):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            dirs = rel.split("/")[:-1]
            for i in range(len(dirs)):
                if i > 0 and not recursive:
                    break
                d = prefix + "/".join(dirs[: i + 1])
                out.setdefault(d, {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                   "path": d})
            if dirs and not recursive:
                continue
            entry = {"type": "file", "oid": f.blob_id, "size": len(f.pointer) if f.lfs else len(f.data), "path": p}
            if f.lfs:
                entry["size"] = len(f.data)
                entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
            out[p] = entry
        return list(out.values())

    def _resolve(self, repo_id: str, rev: str, path: str, token: str | None):
        repo = self._repo(repo_id, token)
        if repo is None:
            return
        sha = self._commit(repo, rev)
        if sha is None:
            return
        if repo.gated and token not in repo.readers:
            message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            return self._error(401 if token is None else 403, "GatedRepo", message)
        f = repo.commits[sha].get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}")
        common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers = {**common, "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data)),
                       "ETag": f'"{f.blob_id}"', "Location": f"{self.owner.cdn_base}/lfs-cdn/{f.sha256}"}
            return self._send(302, b"", headers, ctype="text/plain")
        self._content(f.data, {**common, "ETag": f'"{f.blob_id}"'})

    def _cdn(self, sha256: str):
        for repo in self.owner.repos.values():
            for tree in repo.commits.values():
                for f in tree.values():
                    if f.lfs and f.sha256 == sha256:
                        return self._content(f.data, {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"})
        self._error(404, None, "Not Found")

    def _content(self, data: bytes, headers: dict):
        rng = self.headers.get("Range")
        m = _RANGE.match(rng.strip()) if rng else None
        if m and (m.group(1) or m.group(2)):
            size = len(data)
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or start > end:
                return self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"},
                                  ctype="application/octet-stream")
            return self._send(206, data[start:end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{size}"},
                              ctype="application/octet-stream")
        self._send(200, data, headers, ctype="application/octet-stream")
