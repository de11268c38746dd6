"""A client for the OCI distribution API (opencontainers/distribution-spec ``spec.md``).

One :class:`RegistryClient` per registry host, safe to share between threads. It handles the
``/v2/`` ping, anonymous/basic/bearer auth driven by ``WWW-Authenticate`` challenges, manifests,
ranged blob reads that follow storage redirects, and blob uploads: HEAD to skip present blobs,
cross-repository mount, monolithic PUT, and chunked PATCH uploads that resume from the ``Range``
the registry reports after a dropped connection.

Registries as met in practice: some cap request bodies (GHCR: 4 MiB; we shrink chunks on 413),
some refuse chunked uploads (Google Artifact Registry; we fall back to one PUT), some answer 201
to a PATCH (ECR), and ``Location`` may be relative or absolute with a query we must keep intact.
Errors are ``oci.errors`` types; their messages carry host/repository, never a credential or an
upload URL's query.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3

from oci import mediatypes as mt
from oci.auth import Credentials, lookup, parse_challenge
from oci.errors import (
    DigestMismatchError,
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
    RegistryTransientError,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20
DEFAULT_CHUNK_SIZE = 64 << 20
SMALL_BODY_LIMIT = 4 << 20  # GHCR's cap on any request body
_BODY_LIMITED_HOSTS = ("ghcr.io",)
_TRANSIENT = (urllib3.exceptions.HTTPError, OSError)


class RegistryClient:
    """Talks to one registry host. ``insecure`` means plain HTTP."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
        env: Mapping[str, str] | None = None,
        chunk_size: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        pool_size: int = 8,
    ):
        self.host = host
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.credentials = credentials if credentials is not None else lookup(host, env or os.environ)
        limited = any(host == h or host.endswith("." + h) for h in _BODY_LIMITED_HOSTS)
        self.chunk_size = chunk_size or (SMALL_BODY_LIMIT if limited else DEFAULT_CHUNK_SIZE)
        self.max_retries = max_retries
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=15.0, read=timeout),
            blocksize=CHUNK,
        )
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}
        self._basic = False

    # -- requests and auth -----------------------------------------------------------------
    def _name(self, repo: str) -> str:
        return f"{self.host}/{repo}"

    def _url(self, path_or_url: str) -> str:
        # Locations may be relative ("/v2/...") or absolute; urljoin keeps the query as given.
        return urljoin(self.base + "/", path_or_url)

    def request(self, method: str, url: str, *, scope: tuple[str, ...], what: str, headers=None, body=None,
                preload: bool = True) -> urllib3.BaseHTTPResponse:
        """One request with auth; a 401 with a challenge is answered once. ``body`` may be a callable."""
        for attempt in range(2):
            h = dict(headers or {})
            auth = self._auth_header(scope)
            if auth:
                h["Authorization"] = auth
            payload = body() if callable(body) else body
            try:
                resp = self.pool.request(method, self._url(url), headers=h, body=payload, preload_content=preload,
                                         redirect=False, retries=False)
            except _TRANSIENT as exc:
                raise RegistryTransientError(
                    f"{self.host}: {what} failed ({type(exc).__name__}); the connection dropped or timed out, retry"
                ) from None
            if resp.status == 401 and attempt == 0 and resp.headers.get("WWW-Authenticate"):
                challenge = resp.headers["WWW-Authenticate"]
                _drain(resp)
                self._authenticate(challenge, scope, what)
                continue
            return resp
        return resp

    def _auth_header(self, scope: tuple[str, ...]) -> str | None:
        with self._lock:
            token = self._tokens.get(" ".join(scope))
            if token:
                return f"Bearer {token}"
            if self._basic and self.credentials:
                return self.credentials.basic_header()
        return None

    def _authenticate(self, challenge: str, scope: tuple[str, ...], what: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if not self.credentials:
                raise RegistryAuthError(f"{self.host}: {what} needs a login; run `docker login {self.host}` "
                                        "or pass --username with --password-stdin")
            with self._lock:
                self._basic = True
            return
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryAuthError(f"{self.host}: {what}: unsupported auth challenge {scheme!r}")
        scopes = list(scope)
        if params.get("scope") and params["scope"] not in scopes:
            scopes.append(params["scope"])
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in scopes]
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = {"Authorization": self.credentials.basic_header()} if self.credentials else {}
        try:
            resp = self.pool.request("GET", url, headers=headers, retries=False, redirect=True)
        except _TRANSIENT as exc:
            raise RegistryTransientError(f"{self.host}: the token service failed ({type(exc).__name__}); retry") from None
        if resp.status in (401, 403):
            raise RegistryAuthError(f"{self.host}: the token service refused our credentials for {what}; "
                                    "check the login (docker login, REGISTRY_AUTH_FILE, --username)")
        if resp.status != 200:
            raise _status_error(resp, f"{self.host}: token service", "getting a token")
        try:
            data = json.loads(resp.data)
            token = data.get("token") or data["access_token"]
        except (ValueError, KeyError, TypeError):
            raise RegistryError(f"{self.host}: the token service answered without a token; check the registry") from None
        with self._lock:
            self._tokens[" ".join(scope)] = token

    # -- reading ---------------------------------------------------------------------------
    def ping(self) -> None:
        """GET /v2/: raises unless the host speaks the distribution API (401 counts as yes)."""
        resp = self.request("GET", "/v2/", scope=(), what="ping")
        _drain(resp)
        if resp.status not in (200, 401):
            if resp.status == 404:
                raise RegistryError(f"{self.host}: /v2/ answered 404, so this is not an OCI registry; check the "
                                    "host and port (and --insecure for plain HTTP)")
            raise _status_error(resp, self.host, "the /v2/ ping")

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """(raw bytes, media type, digest) of a manifest or index; verified when ``reference`` is a digest."""
        what = f"manifest {reference}"
        resp = self.request("GET", f"/v2/{repo}/manifests/{reference}", scope=(_scope(repo, "pull"),), what=what,
                            headers={"Accept": mt.ACCEPT_ALL}, preload=False)
        if resp.status != 200:
            raise _status_error(resp, self._name(repo), what)
        try:
            data = resp.read(MAX_MANIFEST + 1)
        except _TRANSIENT:
            raise RegistryTransientError(f"{self._name(repo)}: reading {what} failed; retry") from None
        finally:
            resp.release_conn()
        if len(data) > MAX_MANIFEST:
            raise RegistryError(f"{self._name(repo)}: {what} is larger than 4 MiB; refusing it")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatchError(f"{self._name(repo)}@{reference}: the registry served a manifest with digest {digest}")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            media_type = json.loads(data).get("mediaType") or media_type
        except (ValueError, AttributeError):
            raise RegistryError(f"{self._name(repo)}: {what} is not JSON") from None
        return data, media_type, digest

    def resolve(self, repo: str, reference: str, platform: str | None = None) -> tuple[dict, str]:
        """The image manifest ``reference`` names and its digest; an index is narrowed to ``platform``."""
        data, media_type, digest = self.get_manifest(repo, reference)
        doc = json.loads(data)
        if media_type in mt.INDEX_TYPES or ("manifests" in doc and "layers" not in doc):
            entry = select_platform(doc.get("manifests", []), platform)
            if entry is None:
                raise RegistryNotFoundError(f"{self._name(repo)}:{reference}: no image for platform "
                                            f"{platform or host_platform()} in the index; pick another tag")
            data, media_type, digest = self.get_manifest(repo, entry["digest"])
            doc = json.loads(data)
        if "layers" not in doc:
            raise RegistryError(f"{self._name(repo)}:{reference}: not an image manifest ({media_type})")
        return doc, digest

    def head_blob(self, repo: str, digest: str) -> int | None:
        """The blob's size when the repository has it, else None."""
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=(_scope(repo, "pull"),), what=f"blob {digest}")
        _drain(resp)
        if resp.status == 200:
            return int(resp.headers.get("Content-Length") or 0)
        if resp.status == 404:
            return None
        if resp.status in (307, 302, 301, 303, 308):
            return -1  # present; size is on the storage side
        raise _status_error(resp, self._name(repo), f"checking blob {digest}")

    def read_blob(self, repo: str, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes [start, end) of a blob in ≤1 MiB chunks, following redirects to storage.

        A short body raises RegistryTransientError (the engine resumes from where it stopped).
        """
        what = f"blob {digest}"
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-" + (str(end - 1) if end is not None else "")
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=(_scope(repo, "pull"),), what=what,
                            headers=headers, preload=False)
        for _ in range(5):
            if resp.status not in (301, 302, 303, 307, 308):
                break
            location = resp.headers.get("Location", "")
            _drain(resp)
            target = urljoin(self._url(f"/v2/{repo}/blobs/{digest}"), location)
            # The storage behind a redirect gets no registry credentials: the URL is pre-signed.
            try:
                resp = self.pool.request("GET", target, headers=headers, preload_content=False, redirect=False,
                                         retries=False)
            except _TRANSIENT as exc:
                raise RegistryTransientError(f"{self._name(repo)}: {what} storage fetch failed "
                                             f"({type(exc).__name__}); retry") from None
        if resp.status not in (200, 206):
            raise _status_error(resp, self._name(repo), what)
        skip = start if (resp.status == 200 and start) else 0  # the server ignored our Range
        want = None if end is None else end - start
        got = 0
        try:
            for chunk in resp.stream(CHUNK):
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                if want is not None and got + len(chunk) > want:
                    chunk = chunk[: want - got]
                if chunk:
                    got += len(chunk)
                    yield chunk
                if want is not None and got >= want:
                    break
        except _TRANSIENT as exc:
            raise RegistryTransientError(f"{self._name(repo)}: {what} stopped after {start + got} bytes "
                                         f"({type(exc).__name__}); retry") from None
        finally:
            resp.release_conn()
        if want is not None and got < want:
            raise RegistryTransientError(f"{self._name(repo)}: {what} ended after {start + got} of {end} bytes; retry")

    def read_small_blob(self, repo: str, digest: str, limit: int = MAX_MANIFEST) -> bytes:
        """A small blob (an image config) in memory, digest-verified."""
        data = bytearray()
        for chunk in self.read_blob(repo, digest):
            data += chunk
            if len(data) > limit:
                raise RegistryError(f"{self._name(repo)}: blob {digest} is larger than {limit} bytes; refusing it")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatchError(f"{self._name(repo)}: blob {digest} arrived corrupted; retry")
        return bytes(data)

    def fetch_blob(self, repo: str, digest: str, dest: Path, size: int | None = None) -> None:
        """Download a blob to ``dest`` (atomically), verifying its digest and size."""
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
        h = hashlib.sha256()
        n = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in self.read_blob(repo, digest):
                    h.update(chunk)
                    fh.write(chunk)
                    n += len(chunk)
            if "sha256:" + h.hexdigest() != digest or (size is not None and n != size):
                raise DigestMismatchError(f"{self._name(repo)}: blob {digest} arrived corrupted; retry the pull")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    # -- writing ---------------------------------------------------------------------------
    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        what = f"manifest {reference}"
        resp = self.request("PUT", f"/v2/{repo}/manifests/{reference}", scope=(_scope(repo, "pull,push"),), what=what,
                            headers={"Content-Type": media_type}, body=data)
        _drain(resp)
        if resp.status not in (200, 201, 202):
            raise _status_error(resp, self._name(repo), f"pushing {what}")
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def upload_blob(self, repo: str, digest: str, size: int, path: Path, mount_from: str | None = None) -> str:
        """Make ``repo`` hold the blob at ``path``: returns "mounted" or "uploaded".

        Blobs up to the chunk size go in one PUT; larger ones in PATCH chunks that resume from the
        registry's ``Range`` after a failure. A registry that refuses chunks gets one PUT.
        """
        push = _scope(repo, "pull,push")
        scope = (push, _scope(mount_from, "pull")) if mount_from else (push,)
        query = f"?{urlencode({'mount': digest, 'from': mount_from})}" if mount_from else ""
        resp = self._start_upload(repo, query, scope, digest)
        if resp.status == 201:
            return "mounted"
        location = resp.headers["Location"]
        min_chunk = int(resp.headers.get("OCI-Chunk-Min-Length") or 0)
        if size <= self.chunk_size:
            try:
                self._put_whole(repo, location, digest, size, path, scope)
                return "uploaded"
            except _TooLarge:
                # The registry caps request bodies (GHCR): small chunks in a fresh session.
                min_chunk, chunk = 0, min(SMALL_BODY_LIMIT, self.chunk_size)
                location = self._start_upload(repo, "", (push,), digest).headers["Location"]
                if self._chunked(repo, location, digest, size, path, (push,), chunk):
                    return "uploaded"
                raise RegistryError(f"{self._name(repo)}: the registry refuses both large bodies and chunked "
                                    f"uploads for {digest}; nothing more to try") from None
        if not self._chunked(repo, location, digest, size, path, (push,), max(self.chunk_size, min_chunk)):
            # Chunks refused before any byte was taken: one PUT in a fresh session.
            resp = self._start_upload(repo, "", (push,), digest)
            self._put_whole(repo, resp.headers["Location"], digest, size, path, (push,))
        return "uploaded"

    def _start_upload(self, repo: str, query: str, scope, digest: str):
        what = f"starting the upload of {digest}"
        resp = self._retrying(lambda: self.request("POST", f"/v2/{repo}/blobs/uploads/{query}", scope=scope, what=what,
                                                   headers={"Content-Length": "0"}, body=b""))
        _drain(resp)
        if resp.status == 201:
            return resp
        if resp.status != 202 or not resp.headers.get("Location"):
            raise _status_error(resp, self._name(repo), what)
        return resp

    def _put_whole(self, repo: str, location: str, digest: str, size: int, path: Path, scope) -> None:
        what = f"uploading {digest}"
        for attempt in range(self.max_retries + 1):
            try:
                resp = self.request("PUT", _with_digest(location, digest), scope=scope, what=what,
                                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                                    body=lambda: _FileSlice(path, 0, size))
            except RegistryTransientError:
                if attempt == self.max_retries:
                    raise
                time.sleep(_backoff(attempt))
                # A half-finished monolithic upload cannot be continued: start a new session.
                location = self._start_upload(repo, "", scope[:1], digest).headers["Location"]
                continue
            _drain(resp)
            if resp.status in (201, 204):
                return
            if resp.status == 413:
                raise _TooLarge()
            if _transient_status(resp.status) and attempt < self.max_retries:
                time.sleep(_backoff(attempt))
                location = self._start_upload(repo, "", scope[:1], digest).headers["Location"]
                continue
            raise _status_error(resp, self._name(repo), what)

    def _chunked(self, repo, location, digest, size, path, scope, chunk) -> bool:
        """PATCH chunks then the closing PUT. False when the registry refuses chunked uploads."""
        what = f"uploading {digest}"
        offset = 0
        failures = 0
        restarts = 0
        while offset < size:
            n = min(chunk, size - offset)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(n),
                       "Content-Range": f"{offset}-{offset + n - 1}"}
            try:
                resp = self.request("PATCH", location, scope=scope, what=what, headers=headers,
                                    body=lambda o=offset, n=n: _FileSlice(path, o, n))
            except RegistryTransientError:
                failures += 1
                if failures > self.max_retries:
                    raise
                time.sleep(_backoff(failures - 1))
                try:
                    location, offset = self._upload_status(repo, location, what, scope)
                except _SessionLost:
                    # Registries that sign the offset into Location (distribution's _state) cannot
                    # continue a session whose last answer we lost: start again, bounded.
                    restarts += 1
                    if restarts > self.max_retries:
                        raise RegistryError(f"{self._name(repo)}: {what} kept losing its upload session; "
                                            "check the network to the registry and retry") from None
                    location = self._start_upload(repo, "", scope, digest).headers["Location"]
                    offset = 0
                log.info("%s: %s continues at byte %d after a dropped connection", self._name(repo), digest, offset)
                continue
            _drain(resp)
            if resp.status in (201, 202, 204):
                location = resp.headers.get("Location") or location
                received = _range_end(resp.headers.get("Range"))
                offset = received if received is not None else offset + n
                failures = 0
                continue
            if resp.status == 413 and chunk > SMALL_BODY_LIMIT:
                chunk = SMALL_BODY_LIMIT  # the registry caps request bodies (GHCR)
                location, offset = self._upload_status(repo, location, what, scope)
                continue
            if resp.status == 416 or _transient_status(resp.status):
                failures += 1
                if failures > self.max_retries:
                    raise _status_error(resp, self._name(repo), what)
                time.sleep(_backoff(failures - 1))
                location, offset = self._upload_status(repo, location, what, scope)
                continue
            if offset == 0 and 400 <= resp.status < 500 and resp.status not in (401, 403):
                log.info("%s: chunked upload refused (HTTP %d); using one PUT", self._name(repo), resp.status)
                return False
            raise _status_error(resp, self._name(repo), what)
        resp = self._retrying(lambda: self.request("PUT", _with_digest(location, digest), scope=scope, what=what,
                                                   headers={"Content-Length": "0"}, body=b""))
        _drain(resp)
        if resp.status not in (201, 204):
            raise _status_error(resp, self._name(repo), f"finishing {what}")
        return True

    def _upload_status(self, repo, location, what, scope) -> tuple[str, int]:
        """GET the upload session: its (possibly new) Location and the next byte to send."""
        resp = self._retrying(lambda: self.request("GET", location, scope=scope, what=what))
        if resp.status in (400, 404, 416):
            _drain(resp)
            raise _SessionLost()
        _drain(resp)
        if resp.status not in (204, 200):
            raise _status_error(resp, self._name(repo), f"resuming {what}")
        received = _range_end(resp.headers.get("Range"))
        return resp.headers.get("Location") or location, received or 0

    def _retrying(self, call):
        for attempt in range(self.max_retries + 1):
            try:
                resp = call()
            except RegistryTransientError:
                if attempt == self.max_retries:
                    raise
            else:
                if not _transient_status(resp.status) or attempt == self.max_retries:
                    return resp
                _drain(resp)
            time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.pool.clear()


class _SessionLost(Exception):
    """The registry no longer knows (or no longer accepts) an upload session's Location."""


class _TooLarge(Exception):
    """413 on a monolithic upload: the caller retries in small chunks."""


class _FileSlice:
    """A read-only file view of bytes [offset, offset+length): streamed request bodies."""

    def __init__(self, path: Path, offset: int, length: int):
        self._fh = open(path, "rb")
        self._fh.seek(offset)
        self._left = length

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            self._fh.close()
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._fh.read(n)
        self._left -= len(data)
        if not data:
            self._left = 0
        return data

    def __del__(self):
        self._fh.close()


def _scope(repo: str, actions: str) -> str:
    return f"repository:{repo}:{actions}"


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if urlsplit(location).query else "?") + urlencode({"digest": digest})


def _range_end(value: str | None) -> int | None:
    """``Range: 0-1023`` → 1024 bytes received (distribution writes ``0-0`` for none at all)."""
    if not value:
        return None
    try:
        start, _, end = value.replace("bytes=", "").partition("-")
        last = int(end)
    except ValueError:
        return None
    return 0 if last <= 0 else last + 1


def _transient_status(status: int) -> bool:
    return status == 429 or status >= 500


def _backoff(attempt: int) -> float:
    return min(0.2 * (2**attempt), 5.0)


def _drain(resp) -> None:
    try:
        resp.drain_conn()
    except _TRANSIENT:
        pass
    resp.release_conn()


def _status_error(resp, name: str, what: str) -> Exception:
    status = resp.status
    detail = ""
    try:
        body = resp.data if resp.data is not None else b""
        errors = json.loads(body[:4096] or b"{}").get("errors") or []
        if errors:
            detail = f" ({errors[0].get('code', '')}: {str(errors[0].get('message', ''))[:120]})"
    except (ValueError, AttributeError, TypeError, *_TRANSIENT):
        pass
    _drain(resp)
    if status in (401, 403):
        return RegistryAuthError(f"{name}: {what} was refused (HTTP {status}){detail}; check the credentials "
                                 "(docker login, REGISTRY_AUTH_FILE, --username) and the repository's permissions")
    if status == 404:
        return RegistryNotFoundError(f"{name}: {what} not found (HTTP 404){detail}; check the repository and tag")
    if _transient_status(status):
        return RegistryTransientError(f"{name}: {what} failed with HTTP {status}; the registry is busy or failing, retry")
    return RegistryError(f"{name}: {what} failed with HTTP {status}{detail}")


def host_platform() -> str:
    import platform

    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"linux/{arch}"


def select_platform(manifests: list[dict], want: str | None) -> dict | None:
    """The index entry for ``want`` (default: this host, then linux/amd64); a lone entry otherwise."""
    wanted = [want] if want else [host_platform(), "linux/amd64"]
    for w in wanted:
        os_name, _, arch = w.partition("/")
        arch, _, variant = arch.partition("/")
        for m in manifests:
            p = m.get("platform") or {}
            if p.get("os") == os_name and p.get("architecture") == arch and (not variant or p.get("variant") == variant):
                return m
    real = [m for m in manifests if (m.get("platform") or {}).get("architecture") not in ("unknown",)]
    return real[0] if len(real) == 1 and not want else None
