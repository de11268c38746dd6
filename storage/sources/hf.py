"""``hf://org/repo[:revision|@revision][/sub/dir]``: a Hugging Face model repo, by the Hub HTTP API.

KServe writes ``hf://org/repo:revision``; ``hf://org/repo@revision`` (huggingface_hub's form) is
accepted too, and a path after the repo keeps only that folder (its files land at DEST's root).
The revision (default ``main``) is resolved to a commit sha once, recorded as the manifest's
revision, and every read names that sha, so a branch moving mid-download cannot mix commits.

Environment: ``HF_TOKEN`` (legacy ``HUGGING_FACE_HUB_TOKEN``) sent as ``Authorization: Bearer``;
``HF_ENDPOINT`` (default https://huggingface.co) for mirrors and private hubs.

Protocol, all through urllib3 (nothing is written outside DEST — no ``~/.cache/huggingface``):
- ``GET {endpoint}/api/models/{repo}/revision/{rev}`` → ``sha``;
- ``GET {endpoint}/api/models/{repo}/tree/{sha}[/{dir}]?recursive=true`` (pages via ``Link``) →
  paths, sizes, git blob ids and, for LFS files, their sha256 (checked by the engine);
- ranged ``GET {endpoint}/{repo}/resolve/{sha}/{path}``, following the redirect to the CDN
  (urllib3 drops ``Authorization`` when a redirect leaves the host).
Hub errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo);
each becomes one of our typed errors with a line saying what to do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import quote

import urllib3

from storage.errors import AccessDeniedError, BadURIError, NotFoundError, StorageError, TransientError
from storage.sources.base import Listing, RemoteFile, Source, safe_relpath
from storage.sources.streaming import urllib3_pool, urllib3_range

DEFAULT_ENDPOINT = "https://huggingface.co"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def parse_hf_uri(uri: str) -> tuple[str, str, str]:
    """``(repo_id, revision, subfolder)`` from an ``hf://`` URI; BadURIError when malformed."""
    rest = uri[len("hf://"):] if uri.lower().startswith("hf://") else ""
    parts = [p for p in rest.split("/")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise BadURIError(f"{uri}: expected hf://ORG/REPO[:REVISION][/SUBFOLDER]")
    org, name = parts[0], parts[1]
    revision = ""
    for sep in (":", "@"):
        if sep in name:
            name, _, revision = name.partition(sep)
            if not revision:
                raise BadURIError(f"{uri}: empty revision after {sep!r}; write hf://{org}/{name}{sep}REVISION")
            break
    if not _NAME.match(org) or not _NAME.match(name):
        raise BadURIError(f"{uri}: {org}/{name} is not a valid repository id")
    sub = "/".join(p for p in parts[2:] if p)
    if ".." in sub.split("/"):
        raise BadURIError(f"{uri}: the subfolder may not contain '..'")
    return f"{org}/{name}", revision or "main", sub


class HFSource(Source):
    def __init__(self, uri, env=None):
        super().__init__(uri, env)
        self.repo, self.revision, self.subfolder = parse_hf_uri(uri)
        self.endpoint = (self.env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        if not self.endpoint.startswith(("http://", "https://")):
            raise BadURIError(f"HF_ENDPOINT={self.endpoint!r} is not an http(s) URL")
        self.token = self.env.get("HF_TOKEN") or self.env.get("HUGGING_FACE_HUB_TOKEN") or ""
        self.sha: str | None = None
        self.pool = urllib3_pool(self.settings)

    def secrets(self) -> list[str]:
        return [self.token] if self.token else []

    # -- HTTP ------------------------------------------------------------------------------------
    def _headers(self, extra: dict | None = None) -> dict:
        headers = {"User-Agent": "modeldepot", "Accept-Encoding": "identity"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    def _get(self, url: str, headers: dict | None = None, stream: bool = False):
        try:
            return self.pool.request("GET", url, headers=self._headers(headers), preload_content=not stream,
                                     decode_content=False)
        except urllib3.exceptions.MaxRetryError as exc:
            if isinstance(exc.reason, urllib3.exceptions.ResponseError):
                raise StorageError(f"{self.describe()}: too many redirects from the Hub") from None
            raise TransientError(f"{self.describe()}: {type(exc.reason).__name__} while connecting to "
                                 f"{self.endpoint}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"{self.describe()}: {type(exc).__name__} while talking to {self.endpoint}") from None

    def _error(self, resp, what: str) -> StorageError:
        status = resp.status
        code = resp.headers.get("X-Error-Code", "")
        where = self.describe()
        token_hint = "HF_TOKEN is set but the Hub refused it" if self.token else "set HF_TOKEN"
        if code == "RepoNotFound":
            return NotFoundError(f"{where}: repository {self.repo} not found; check the name, or {token_hint} "
                                 "if it is private")
        if code == "RevisionNotFound":
            return NotFoundError(f"{where}: revision {self.revision!r} not found in {self.repo}; use a branch, "
                                 "tag or commit sha that exists")
        if code == "EntryNotFound":
            return NotFoundError(f"{where}: {what} not found in {self.repo} at {self.revision!r}")
        if code == "GatedRepo" or status in (401, 403):
            if code == "GatedRepo":
                if self.token:
                    return AccessDeniedError(f"{where}: {self.repo} is gated and this token has no access; accept "
                                             f"its conditions at {self.endpoint}/{self.repo} with the token's account")
                return AccessDeniedError(f"{where}: {self.repo} is gated; accept its conditions at "
                                         f"{self.endpoint}/{self.repo} and set HF_TOKEN")
            if self.token:
                return AccessDeniedError(f"{where}: the Hub refused HF_TOKEN (HTTP {status}); check that the token "
                                         "is valid and can read this repository")
            return AccessDeniedError(f"{where}: access denied (HTTP {status}); set HF_TOKEN to a token that can "
                                     "read this repository")
        if status == 404:
            return NotFoundError(f"{where}: {what} not found (HTTP 404)")
        if status in (408, 429) or status >= 500:
            return TransientError(f"{where}: the Hub answered HTTP {status} for {what}")
        return StorageError(f"{where}: the Hub refused {what} (HTTP {status})")

    def _json(self, url: str, what: str):
        resp = self._get(url)
        if resp.status != 200:
            raise self._error(resp, what)
        try:
            return json.loads(resp.data), resp.headers
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TransientError(f"{self.describe()}: unreadable answer from the Hub for {what}") from None

    # -- Source ----------------------------------------------------------------------------------
    def list(self) -> Listing:
        info, _ = self._json(f"{self.endpoint}/api/models/{self.repo}/revision/{quote(self.revision, safe='')}",
                             "the revision")
        sha = info.get("sha") if isinstance(info, dict) else None
        if not sha:
            raise StorageError(f"{self.describe()}: the Hub did not say which commit {self.revision!r} is")
        self.sha = sha
        url = f"{self.endpoint}/api/models/{self.repo}/tree/{sha}"
        if self.subfolder:
            url += "/" + quote(self.subfolder, safe="/")
        url += "?recursive=true&expand=false"
        files: list[RemoteFile] = []
        what = f"folder {self.subfolder!r}" if self.subfolder else "the file list"
        while url:
            entries, headers = self._json(url, what)
            for entry in entries if isinstance(entries, list) else []:
                if entry.get("type") != "file":
                    continue
                files.append(self._entry(entry))
            m = _LINK_NEXT.search(headers.get("Link", ""))
            url = m.group(1) if m else ""
        if not files:
            where = f"folder {self.subfolder!r} of " if self.subfolder else ""
            raise NotFoundError(f"{self.describe()}: {where}{self.repo} at {self.revision!r} holds no files")
        return Listing(files, revision=sha)

    def _entry(self, entry: dict) -> RemoteFile:
        path = entry["path"]
        rel = path[len(self.subfolder) + 1:] if self.subfolder else path
        lfs = entry.get("lfs") or None
        checksums = {}
        etag = entry.get("oid")
        size = int(entry.get("size", 0))
        if lfs and lfs.get("oid"):
            checksums["sha256"] = str(lfs["oid"]).lower()
            etag = str(lfs["oid"])
            size = int(lfs.get("size", size))
        return RemoteFile(path=safe_relpath(rel, self.uri), key=path, size=size, etag=etag, checksums=checksums)

    def read(self, file: RemoteFile, start: int = 0, end: int | None = None,
             meta: dict | None = None) -> Iterator[bytes]:
        if file.size == 0 or (end is not None and end <= start):
            return
        url = f"{self.endpoint}/{self.repo}/resolve/{self.sha or quote(self.revision, safe='')}/{quote(file.key, safe='/')}"
        resp = self._get(url, {"Range": f"bytes={start}-{'' if end is None else end - 1}"}, stream=True)
        if resp.status not in (200, 206):
            try:
                raise self._error(resp, file.path)
            finally:
                resp.close()
        yield from urllib3_range(resp, start, end, f"{self.describe()}: {file.path}")

    def close(self) -> None:
        self.pool.clear()
