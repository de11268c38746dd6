"""``http(s)://`` single files (presigned URLs included), through urllib3.

Size, ETag and range support come from a HEAD, or from a one-byte ranged GET where HEAD is refused
(presigned URLs are signed for GET only). Query strings are sent as given; Content-Type is never judged.
Headers come from KServe's ``<hostname>-headers`` variable (a JSON object) and are never logged.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import urllib3

from storage.config import json_object_env
from storage.errors import (
    AccessDeniedError,
    BadURIError,
    IntegrityError,
    NotFoundError,
    StorageError,
    TransientError,
)
from storage.hashing import normalize_md5
from storage.sources.base import Listing, RemoteFile, Source, safe_relpath
from storage.sources.streaming import urllib3_pool, urllib3_range

_CONTENT_RANGE = re.compile(r"bytes\s+(?:\d+-\d+|\*)/(\d+|\*)")


def status_error(status: int, what: str) -> StorageError:
    """Our error type for an HTTP status that is not a success."""
    if status in (401, 403):
        return AccessDeniedError(f"{what}: access denied (HTTP {status}); check the credentials or headers for this host")
    if status in (404, 410):
        return NotFoundError(f"{what}: not found (HTTP {status}); check the URI")
    if status in (408, 429) or status >= 500:
        return TransientError(f"{what}: server answered HTTP {status}")
    return StorageError(f"{what}: server refused the request (HTTP {status})")


class HTTPSource(Source):
    def __init__(self, uri, env=None):
        super().__init__(uri, env)
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadURIError(f"{self.describe()}: expected http(s)://HOST/PATH")
        self.headers = self._headers(parts.hostname)
        self.supports_ranges = True
        self.pool = urllib3_pool(self.settings)

    def _headers(self, hostname: str) -> dict[str, str]:
        value = json_object_env(self.env, f"{hostname}-headers", "a JSON object of header names to values")
        return {str(k): str(v) for k, v in value.items()}

    def _request(self, method: str, headers: dict[str, str]):
        try:
            return self.pool.request(method, self.uri, headers={**self.headers, **headers},
                                     preload_content=False, decode_content=False)
        except urllib3.exceptions.MaxRetryError as exc:
            if isinstance(exc.reason, urllib3.exceptions.ResponseError):
                raise StorageError(f"{self.describe()}: too many redirects") from None
            raise TransientError(f"{self.describe()}: {type(exc.reason).__name__} while connecting") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"{self.describe()}: {type(exc).__name__} while connecting") from None

    def list(self) -> Listing:
        """Size, identity and range support: from a HEAD when the server answers it fully, else
        from a one-byte ranged GET (presigned URLs are signed for GET only and refuse HEAD)."""
        head = self._request("HEAD", {})
        head.close()
        length = head.headers.get("Content-Length", "")
        if head.status == 200 and length.isdigit() and "bytes" in head.headers.get("Accept-Ranges", "").lower():
            return self._listing(head.headers, int(length))
        if head.status in (401, 404, 410):
            raise status_error(head.status, self.describe())
        # 403 may mean "signed for GET only" (presigned URLs), 405/501 "no HEAD here", and a
        # 200 without Accept-Ranges leaves range support unknown: a ranged GET settles all three.
        return self._probe()

    def _probe(self) -> Listing:
        resp = self._request("GET", {"Range": "bytes=0-0"})
        try:
            size: int | None
            if resp.status == 206:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                size = int(m.group(1)) if m and m.group(1) != "*" else None
            elif resp.status == 200:
                self.supports_ranges = False
                length = resp.headers.get("Content-Length")
                size = int(length) if length and length.isdigit() else None
            elif resp.status == 416 and resp.headers.get("Content-Range", "").endswith("/0"):
                size = 0
            else:
                raise status_error(resp.status, self.describe())
        finally:
            # Never drain a 200 body here: it may be the whole multi-GB file.
            resp.close()
        return self._listing(resp.headers, size)

    def _listing(self, headers, size: int | None) -> Listing:
        name = self._name(headers)
        checksums = {}
        md5 = headers.get("Content-MD5") or self._goog_md5(headers.get("x-goog-hash", ""))
        if md5 and normalize_md5(md5):
            checksums["md5"] = normalize_md5(md5)
        etag = headers.get("ETag") or headers.get("Last-Modified")
        return Listing([RemoteFile(path=name, key=self.uri, size=size, etag=etag, checksums=checksums)])

    @staticmethod
    def _goog_md5(value: str) -> str | None:
        for part in value.split(","):
            algo, _, digest = part.strip().partition("=")
            if algo == "md5":
                return digest
        return None

    def _name(self, headers) -> str:
        name = posixpath.basename(unquote(urlsplit(self.uri).path))
        if not name:
            m = re.search(r'filename\*?=(?:UTF-8\'\')?"?([^";]+)"?', headers.get("Content-Disposition", ""))
            name = posixpath.basename(unquote(m.group(1))) if m else ""
        if not name:
            raise BadURIError(f"{self.describe()}: the URL names no file; end the path with the file name")
        return safe_relpath(name, self.uri)

    @staticmethod
    def _unchanged_since_listing(file: RemoteFile) -> dict[str, str]:
        """Preconditions that make the server refuse (412) rather than splice a newer version into
        parts fetched from the listed one. Weak ETags cannot be compared strongly: skip them."""
        tag = file.etag or ""
        if tag.startswith('"'):
            return {"If-Match": tag}
        if tag and not tag.startswith("W/"):
            return {"If-Unmodified-Since": tag}  # no ETag: the listing kept Last-Modified
        return {}

    def read(self, file: RemoteFile, start: int = 0, end: int | None = None,
             meta: dict | None = None) -> Iterator[bytes]:
        headers = self._unchanged_since_listing(file)
        if self.supports_ranges and (start > 0 or end is not None):
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if end is not None and end <= start:
            return
        resp = self._request("GET", headers)
        try:
            if resp.status == 412:
                raise IntegrityError(f"{self.describe()}: the file changed on the server during the download; "
                                     "run it again")
            if resp.status not in (200, 206):
                raise status_error(resp.status, self.describe())
        except BaseException:
            resp.close()
            raise
        yield from urllib3_range(resp, start, end, f"{self.describe()}: {file.path}")
