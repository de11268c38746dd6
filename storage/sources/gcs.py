"""``gs://bucket/prefix`` through gcsfs: its credentials and HTTP session, our listing and reads.

Environment:

| variable                              | meaning                                                        |
|---------------------------------------|----------------------------------------------------------------|
| GOOGLE_APPLICATION_CREDENTIALS        | path to a service-account (or other ADC) JSON file (KServe's)   |
| GOOGLE_APPLICATION_CREDENTIALS_JSON   | the same JSON inline (what storage-config ``gs`` entries set)   |
| GCS_ANONYMOUS                         | ``true``: send no credentials (public buckets)                  |
| STORAGE_EMULATOR_HOST                 | emulator ``host:port`` or URL; anonymous unless keys are given  |
| GCS_ENDPOINT_URL                      | a custom JSON-API endpoint (private service connect, proxies)   |

Without credentials, Google's default chain applies (workload identity, metadata server, gcloud
login); when it finds nothing, the bucket is read anonymously, as KServe does.

Listing is the JSON API ``objects.list`` with ``prefix=<key>/`` so that ``gs://b/model`` never
lists ``model-v2/...``; an exact object name lists that object. Each object's ``md5Hash`` (or, for
composite objects, which have none, ``crc32c``) is the checksum the file is known by; its
``crc32c`` is what the engine verifies when google-crc32c's C extension is installed (5 GB/s
against MD5's 0.46 on the benchmark machine), the MD5 otherwise. Reads are ranged
``alt=media`` GETs pinned to the listed ``generation``, so an object replaced mid-download fails
(404 on the old generation) instead of splicing two versions.

gcsfs's own ``_call`` retries six times with up to 32 s sleeps and logs tracebacks; we issue the
requests on its session ourselves so that the engine alone retries (resuming by range) and logs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from posixpath import basename
from urllib.parse import quote

# Recent gcsfs exports an "extended" filesystem by default that, before ordinary JSON-API calls,
# asks the gRPC Storage Control API what kind of bucket it is talking to (zonal / hierarchical).
# An emulator or a custom HTTP endpoint cannot answer that TLS gRPC call, and every operation then
# waits ~60 s for it to time out. We only list objects and read byte ranges, which the plain JSON
# API does for every bucket type, so we switch the extension off (it is read once, at import) and
# use the core class in any case. setdefault: a caller who set it explicitly keeps their choice
# for their own gcsfs use; ours is unaffected either way because we name the core class.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from storage.errors import (  # noqa: E402 - the environment switch above must precede gcsfs
    AccessDeniedError,
    BadURIError,
    IntegrityError,
    NotFoundError,
    StorageError,
    TransientError,
)
from storage.hashing import normalize_md5  # noqa: E402
from storage.sources.base import CHUNK, Listing, RemoteFile, Source, relative_under, safe_relpath  # noqa: E402
from storage.sources.streaming import body_range, read_up_to  # noqa: E402

_TRUE = ("1", "true", "yes", "on")


class GCSSource(Source):
    def __init__(self, uri, env=None):
        super().__init__(uri, env)
        rest = uri[len("gs://"):] if uri.lower().startswith("gs://") else ""
        self.bucket, _, key = rest.partition("/")
        if not self.bucket or " " in self.bucket or "?" in self.bucket:
            raise BadURIError(f"{self.describe()}: expected gs://BUCKET[/PREFIX]")
        self.key = key.strip("/")
        self._fs = None

    # -- configuration ---------------------------------------------------------------------------
    def endpoint(self) -> str | None:
        env = self.env
        url = env.get("GCS_ENDPOINT_URL") or env.get("STORAGE_EMULATOR_HOST")
        if not url or url == "default":
            return None
        return (url if "://" in url else f"http://{url}").rstrip("/")

    def _inline_credentials(self) -> dict | None:
        raw = self.env.get("GOOGLE_APPLICATION_CREDENTIALS_JSON")
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise BadURIError("GOOGLE_APPLICATION_CREDENTIALS_JSON is not valid JSON") from None
        if not isinstance(value, dict):
            raise BadURIError("GOOGLE_APPLICATION_CREDENTIALS_JSON is not a JSON object")
        return value

    def _token(self):
        """What gcsfs takes as ``token``: a dict, a file path, "anon" or "google_default"."""
        env = self.env
        if env.get("GCS_ANONYMOUS", "").strip().lower() in _TRUE:
            return "anon"
        inline = self._inline_credentials()
        if inline is not None:
            return inline
        path = env.get("GOOGLE_APPLICATION_CREDENTIALS")
        if path:
            if not os.path.isfile(path):
                raise BadURIError(f"{self.describe()}: GOOGLE_APPLICATION_CREDENTIALS names {path!r}, "
                                  "which is not a readable file")
            return path
        if env.get("STORAGE_EMULATOR_HOST"):
            return "anon"  # emulators accept anything; Google's own clients go anonymous here too
        return None  # default chain, then anonymous

    def secrets(self) -> list[str]:
        found = []
        docs = []
        if (inline := self.env.get("GOOGLE_APPLICATION_CREDENTIALS_JSON")):
            found.append(inline)
            docs.append(inline)
        path = self.env.get("GOOGLE_APPLICATION_CREDENTIALS")
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as fh:
                    docs.append(fh.read(1 << 20))
            except OSError:
                pass
        for doc in docs:
            try:
                value = json.loads(doc)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                found += [str(value[k]) for k in ("private_key", "private_key_id", "client_secret",
                                                   "refresh_token") if value.get(k)]
        return found

    @property
    def fs(self):
        if self._fs is None:
            from gcsfs.core import GCSFileSystem

            token = self._token()
            try:
                if token is None:
                    try:
                        fs = GCSFileSystem(token="google_default", endpoint_url=self.endpoint(),
                                           skip_instance_cache=True)
                    except Exception:  # noqa: BLE001 - no default credentials: read anonymously
                        fs = GCSFileSystem(token="anon", endpoint_url=self.endpoint(), skip_instance_cache=True)
                else:
                    fs = GCSFileSystem(token=token, endpoint_url=self.endpoint(), skip_instance_cache=True)
            except StorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - unreadable key files and the like
                raise AccessDeniedError(f"{self.describe()}: the Google credentials could not be loaded "
                                        f"({type(exc).__name__}); check GOOGLE_APPLICATION_CREDENTIALS") from None
            self._fs = fs
        return self._fs

    def _sync(self, coro_fn, *args):
        from fsspec.asyn import sync

        return sync(self.fs.loop, coro_fn, *args)

    def _timeout(self):
        import aiohttp

        s = self.settings
        return aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.stall_timeout)

    def _headers(self, extra: dict | None = None) -> dict:
        try:
            return self.fs._get_headers(extra)  # applies (and refreshes) the OAuth token
        except Exception as exc:  # noqa: BLE001 - google.auth RefreshError and transport errors
            # gcsfs re-raises a refused refresh as HttpError(401) (or NonRetryableError) with the
            # google.auth RefreshError as its cause; RefreshError.retryable tells a token server
            # hiccup from a refused key.
            cause = exc.__cause__ or exc
            refused = type(exc).__name__ == "NonRetryableError" or (
                type(cause).__name__ == "RefreshError" and not getattr(cause, "retryable", False))
            if refused:
                raise AccessDeniedError(f"{self.describe()}: Google refused the credentials (token refresh failed); "
                                        "check GOOGLE_APPLICATION_CREDENTIALS and that the key is not revoked") from None
            raise TransientError(f"{self.describe()}: {type(cause).__name__} while fetching a Google access token") from None

    # -- HTTP ------------------------------------------------------------------------------------
    async def _open(self, url: str, params: dict, headers: dict):
        session = await self.fs._set_session()
        return await session.get(url, params=params, headers=headers, timeout=self._timeout(),
                                 allow_redirects=True)

    async def _get_json(self, url: str, params: dict, headers: dict):
        resp = await self._open(url, params, headers)
        async with resp:
            body = await resp.read()
            return resp.status, body

    def _status_error(self, status: int, body: bytes, what: str) -> StorageError:
        where = self.describe()
        reason = ""
        try:
            doc = json.loads(body or b"{}")
            reason = str(doc.get("error", {}).get("message", "")) if isinstance(doc.get("error"), dict) else ""
        except (json.JSONDecodeError, AttributeError):
            pass
        if status == 404:
            if "bucket" in reason.lower() or what == "the listing":
                return NotFoundError(f"{where}: bucket {self.bucket!r} does not exist")
            return NotFoundError(f"{where}: {what} not found (it may have been replaced or deleted)")
        if status in (401, 403):
            return AccessDeniedError(f"{where}: access denied (HTTP {status}); check GOOGLE_APPLICATION_CREDENTIALS "
                                     "and the bucket's IAM permissions")
        if status == 412:
            return IntegrityError(f"{where}: {what} changed on the server during the download; run it again")
        if status in (408, 429) or status >= 500:
            return TransientError(f"{where}: server answered HTTP {status} for {what}")
        return StorageError(f"{where}: server refused {what} (HTTP {status})")

    def _list_url(self) -> str:
        return f"{self.fs._location}/storage/v1/b/{quote(self.bucket, safe='')}/o"

    def _object_url(self, name: str) -> str:
        return f"{self._list_url()}/{quote(name, safe='')}"

    def _json(self, url: str, params: dict, what: str) -> dict:
        try:
            status, body = self._sync(self._get_json, url, params, self._headers())
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - aiohttp errors and timeouts
            raise TransientError(f"{self.describe()}: {type(exc).__name__} while reading {what}") from None
        if status != 200:
            raise self._status_error(status, body, what)
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            raise TransientError(f"{self.describe()}: unreadable answer while reading {what}") from None

    # -- Source ----------------------------------------------------------------------------------
    def list(self) -> Listing:
        files = self._list_prefix()
        if not files and self.key:
            exact = self._get_exact()
            if exact is not None:
                files = [exact]
        if not files:
            raise NotFoundError(f"{self.describe()}: no objects under this prefix")
        return Listing(files)

    def _list_prefix(self) -> list[RemoteFile]:
        prefix = f"{self.key}/" if self.key else ""
        files: list[RemoteFile] = []
        token = None
        fields = "items(name,size,md5Hash,crc32c,generation,etag),nextPageToken"
        while True:
            params = {"prefix": prefix, "fields": fields, "maxResults": "1000"}
            if token:
                params["pageToken"] = token
            page = self._json(self._list_url(), params, "the listing")
            for obj in page.get("items", []) or []:
                name = obj.get("name", "")
                if name.endswith("/"):
                    continue  # a directory placeholder, not content
                rel = relative_under(self.key, name)
                if rel is not None:
                    files.append(self._entry(rel, obj))
            token = page.get("nextPageToken")
            if not token:
                return files

    def _get_exact(self) -> RemoteFile | None:
        try:
            obj = self._json(self._object_url(self.key), {}, self.key)
        except NotFoundError:
            return None
        return self._entry(basename(self.key), obj)

    def _entry(self, rel: str, obj: dict) -> RemoteFile:
        checksums, alt = {}, {}
        md5 = normalize_md5(obj.get("md5Hash") or "")
        crc32c = obj.get("crc32c")
        if md5:
            checksums["md5"] = md5
            if crc32c:
                alt["crc32c"] = crc32c  # verified instead of the MD5 when CRC32C runs in C
        elif crc32c:
            checksums["crc32c"] = crc32c
        return RemoteFile(path=safe_relpath(rel, self.uri), key=obj["name"], size=int(obj.get("size", 0)),
                          etag=obj.get("etag"), version=str(obj["generation"]) if obj.get("generation") else None,
                          checksums=checksums, alt_checksums=alt)

    def read(self, file: RemoteFile, start: int = 0, end: int | None = None,
             meta: dict | None = None) -> Iterator[bytes]:
        if file.size == 0 or (end is not None and end <= start):
            return
        params = {"alt": "media"}
        if file.version:
            params["generation"] = file.version
        headers = self._headers({"Range": f"bytes={start}-{'' if end is None else end - 1}",
                                 "Accept-Encoding": "identity"})
        resp = None
        try:
            resp = self._sync(self._open, self._object_url(file.key), params, headers)
            if resp.status not in (200, 206):
                body = self._sync(resp.read)
                raise self._status_error(resp.status, body, file.path)
            yield from body_range(lambda: self._sync(read_up_to, resp.content, CHUNK), resp.status, start, end)
        except GeneratorExit:
            raise
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - aiohttp payload errors, timeouts, resets
            raise TransientError(f"{self.describe()}: {type(exc).__name__} while reading {file.path}") from None
        finally:
            if resp is not None:
                resp.close()

    def close(self) -> None:
        self._fs = None
