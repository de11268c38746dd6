"""Azure Blob Storage: ``https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX`` (also
``https://ACCOUNT.zN.blob.storage.azure.net/...``, KServe's forms) and ``az://CONTAINER/PREFIX``.

Environment (first match wins for credentials):

| variable                                   | meaning                                                   |
|--------------------------------------------|-----------------------------------------------------------|
| AZURE_STORAGE_CONNECTION_STRING            | a full connection string (endpoint and credential)        |
| SAS in the URL query, AZURE_STORAGE_SAS_TOKEN | a shared access signature                              |
| AZURE_STORAGE_ACCESS_KEY (or AZURE_STORAGE_KEY, AZURE_STORAGE_ACCOUNT_KEY) | the account key (KServe's name first) |
| AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_TENANT_ID (legacy AZ_CLIENT_ID, AZ_CLIENT_SECRET, AZ_TENANT_ID) | a service principal |
| AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE | workload identity (AKS)            |
| AZURE_AUTHORITY_HOST                       | Entra ID authority for sovereign clouds (login.chinacloudapi.cn …) |
| (none of the above)                        | anonymous: a public container                             |
| AZURE_STORAGE_ACCOUNT_NAME                 | the account for ``az://`` URIs (or from the connection string) |
| AZURE_STORAGE_BLOB_ENDPOINT (alias AZURE_BLOB_ENDPOINT) | the account's blob endpoint, replacing ``https://ACCOUNT.blob.core.windows.net``: emulators (``http://127.0.0.1:10000/devstoreaccount1``), sovereign clouds, private endpoints |

Listing is ``List Blobs`` with ``prefix=<prefix>/`` (``model`` never lists ``model-v2/...``); an
exact blob name lists that blob. Each blob's Content-MD5, when it has one, is the checksum the
engine verifies. Reads are ranged ``Get Blob`` calls conditioned on the listed ETag, so a blob
replaced mid-download fails instead of splicing two versions.

Why the Azure SDK directly rather than through adlfs: adlfs builds ``https://`` account URLs only
(no emulator over http without a connection string), fills every credential it was not given
from ``os.environ`` (which breaks ``download(env=...)`` isolation) and hands back an async client
whose ranged reads we would bridge onto a loop by hand. The SDK client it wraps gives us ranged,
streamed, timeout-bounded reads with the SDK's own retries switched off (the engine retries).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from posixpath import basename
from urllib.parse import parse_qsl, unquote, urlsplit

from storage.errors import (
    AccessDeniedError,
    BadURIError,
    IntegrityError,
    NotFoundError,
    StorageError,
    TransientError,
)
from storage.sources.base import CHUNK, Listing, RemoteFile, Source, relative_under, safe_relpath

_HOST = re.compile(r"^([a-z0-9]+)\.(blob\.core\.windows\.net|z\d+\.blob\.storage\.azure\.net)$", re.I)
_SAS_KEYS = {"sig", "se", "sp", "sv", "sr", "st", "spr", "ss", "srt", "skoid", "sktid", "skt", "ske", "sks", "skv"}


def _first(env, *names) -> str | None:
    for n in names:
        if env.get(n):
            return env[n]
    return None


class AzureSource(Source):
    def __init__(self, uri, env=None):
        super().__init__(uri, env)
        self.sas_from_url: str | None = None
        parts = urlsplit(uri)
        if parts.scheme.lower() == "az":
            self.container = parts.netloc
            self.prefix = unquote(parts.path).strip("/")
            self.account = self.env.get("AZURE_STORAGE_ACCOUNT_NAME") or self._account_from_connection_string()
            self.default_url = f"https://{self.account}.blob.core.windows.net" if self.account else None
        elif parts.scheme.lower() == "https" and (m := _HOST.match(parts.hostname or "")):
            self.account = m.group(1).lower()
            self.default_url = f"https://{parts.hostname}"
            container, _, prefix = unquote(parts.path).lstrip("/").partition("/")
            self.container, self.prefix = container, prefix.strip("/")
            if parts.query:
                pairs = parse_qsl(parts.query, keep_blank_values=True)
                if any(k in _SAS_KEYS for k, _ in pairs):
                    self.sas_from_url = parts.query
        else:
            raise BadURIError(f"{self.describe()}: expected az://CONTAINER[/PREFIX] or "
                              "https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]")
        if not self.container or not re.match(r"^[a-z0-9$][a-z0-9-]*$", self.container):
            raise BadURIError(f"{self.describe()}: {self.container!r} is not a valid container name")
        self._client = None
        self._lock = threading.Lock()

    # -- configuration ---------------------------------------------------------------------------
    def _account_from_connection_string(self) -> str | None:
        conn = self.env.get("AZURE_STORAGE_CONNECTION_STRING") or ""
        for part in conn.split(";"):
            k, _, v = part.partition("=")
            if k.strip().lower() == "accountname" and v:
                return v.strip()
        return None

    def account_url(self) -> str:
        override = _first(self.env, "AZURE_STORAGE_BLOB_ENDPOINT", "AZURE_BLOB_ENDPOINT")
        if override:
            return override.rstrip("/")
        if not self.default_url:
            raise BadURIError(f"{self.describe()}: az:// needs the storage account: set AZURE_STORAGE_ACCOUNT_NAME "
                              "or use https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX")
        return self.default_url

    def _sas(self) -> str | None:
        sas = self.sas_from_url or self.env.get("AZURE_STORAGE_SAS_TOKEN")
        return sas.lstrip("?") if sas else None

    def _account_key(self) -> str | None:
        return _first(self.env, "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY")

    def secrets(self) -> list[str]:
        env = self.env
        found = [v for v in (self._account_key(), self._sas(), env.get("AZURE_STORAGE_CONNECTION_STRING"),
                             _first(env, "AZURE_CLIENT_SECRET", "AZ_CLIENT_SECRET")) if v]
        sas = self._sas()
        if sas:
            found += [v for k, v in parse_qsl(sas) if k == "sig" and v]
        conn = env.get("AZURE_STORAGE_CONNECTION_STRING") or ""
        for part in conn.split(";"):
            k, _, v = part.partition("=")
            if k.strip().lower() in ("accountkey", "sharedaccesssignature") and v:
                found.append(v.strip())
        return found

    def _credential(self):
        env = self.env
        sas = self._sas()
        if sas:
            return sas
        key = self._account_key()
        if key:
            if not self.account and not self._account_in_endpoint():
                raise BadURIError(f"{self.describe()}: an account key needs the account name; set "
                                  "AZURE_STORAGE_ACCOUNT_NAME")
            return {"account_name": self.account or self._account_in_endpoint(), "account_key": key}
        client_id = _first(env, "AZURE_CLIENT_ID", "AZ_CLIENT_ID")
        tenant = _first(env, "AZURE_TENANT_ID", "AZ_TENANT_ID")
        secret = _first(env, "AZURE_CLIENT_SECRET", "AZ_CLIENT_SECRET")
        kwargs = {"authority": env["AZURE_AUTHORITY_HOST"]} if env.get("AZURE_AUTHORITY_HOST") else {}
        if client_id and tenant and secret:
            from azure.identity import ClientSecretCredential

            return ClientSecretCredential(tenant, client_id, secret, **kwargs)
        if client_id and tenant and env.get("AZURE_FEDERATED_TOKEN_FILE"):
            from azure.identity import WorkloadIdentityCredential

            return WorkloadIdentityCredential(tenant_id=tenant, client_id=client_id,
                                              token_file_path=env["AZURE_FEDERATED_TOKEN_FILE"], **kwargs)
        return None  # anonymous: a public container

    def _account_in_endpoint(self) -> str | None:
        override = _first(self.env, "AZURE_STORAGE_BLOB_ENDPOINT", "AZURE_BLOB_ENDPOINT")
        if not override:
            return None
        parts = urlsplit(override)
        host = parts.hostname or ""
        if re.match(r"^[\d.]+$", host) or host == "localhost":
            return parts.path.strip("/").split("/")[0] or None  # emulator style: http://host:port/ACCOUNT
        return host.split(".")[0] or None

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                from azure.storage.blob import BlobServiceClient

                s = self.settings
                kwargs = {
                    "retry_total": 0,  # the engine retries, resuming by range
                    "connection_timeout": s.connect_timeout,
                    "read_timeout": s.stall_timeout,
                    # Bounded memory: the SDK buffers its first GET and each chunk whole.
                    "max_single_get_size": CHUNK,
                    "max_chunk_get_size": CHUNK,
                    "connection_data_block_size": 64 * 1024,
                    "session": _session(s.concurrency + 4),
                }
                conn = self.env.get("AZURE_STORAGE_CONNECTION_STRING")
                try:
                    if conn:
                        self._client = BlobServiceClient.from_connection_string(conn, **kwargs)
                    else:
                        self._client = BlobServiceClient(self.account_url(), credential=self._credential(), **kwargs)
                except StorageError:
                    raise
                except ValueError:
                    raise BadURIError(f"{self.describe()}: the Azure connection settings are malformed; check "
                                      "AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_BLOB_ENDPOINT") from None
            return self._client

    def _map(self, exc: BaseException, what: str) -> StorageError:
        from azure.core import exceptions as az

        where = self.describe()
        if isinstance(exc, StorageError):
            return exc
        code = getattr(exc, "error_code", "") or ""
        code = str(getattr(code, "value", code))  # the SDK hands back a StorageErrorCode enum
        status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
        if code == "ContainerNotFound":
            return NotFoundError(f"{where}: container {self.container!r} does not exist")
        if isinstance(exc, az.ResourceNotFoundError) or status == 404:
            return NotFoundError(f"{where}: {what} not found")
        if isinstance(exc, az.ResourceModifiedError) or status == 412 or code == "ConditionNotMet":
            return IntegrityError(f"{where}: {what} changed on the server during the download; run it again")
        if isinstance(exc, az.ClientAuthenticationError) or status in (401, 403):
            return AccessDeniedError(f"{where}: access denied ({code or f'HTTP {status}' if status else type(exc).__name__}); "
                                     "check the account key, SAS token or service principal and the container's access")
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            return StorageError(f"{where}: the service refused {what} ({code or f'HTTP {status}'})")
        return TransientError(f"{where}: {code or type(exc).__name__} while reading {what}")

    # -- Source ----------------------------------------------------------------------------------
    def list(self) -> Listing:
        try:
            container = self.client.get_container_client(self.container)
            files = self._list_prefix(container)
            if not files and self.prefix:
                exact = self._get_exact(container)
                files = [exact] if exact is not None else []
        except Exception as exc:  # noqa: BLE001 - every failure becomes one of ours
            raise self._map(exc, "the listing") from None
        if not files:
            raise NotFoundError(f"{self.describe()}: no blobs under this prefix")
        return Listing(files)

    def _list_prefix(self, container) -> list[RemoteFile]:
        prefix = f"{self.prefix}/" if self.prefix else None
        files = []
        for blob in container.list_blobs(name_starts_with=prefix):
            name = blob.name
            if name.endswith("/") or (blob.metadata or {}).get("hdi_isfolder") == "true":
                continue  # a directory marker, not content
            rel = relative_under(self.prefix, name)
            if rel is not None:
                files.append(self._entry(rel, blob))
        return files

    def _get_exact(self, container) -> RemoteFile | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = container.get_blob_client(self.prefix).get_blob_properties()
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", "") == "ContainerNotFound":
                raise
            return None
        return self._entry(basename(self.prefix), props)

    def _entry(self, rel: str, blob) -> RemoteFile:
        checksums = {}
        md5 = getattr(getattr(blob, "content_settings", None), "content_md5", None)
        if md5:
            checksums["md5"] = bytes(md5).hex()
        return RemoteFile(path=safe_relpath(rel, self.uri), key=blob.name, size=int(blob.size or 0),
                          etag=blob.etag, checksums=checksums)

    def read(self, file: RemoteFile, start: int = 0, end: int | None = None,
             meta: dict | None = None) -> Iterator[bytes]:
        if file.size == 0 or (end is not None and end <= start):
            return
        try:
            from azure.core import MatchConditions

            blob = self.client.get_blob_client(self.container, file.key)
            kwargs = {"offset": start, "length": None if end is None else end - start}
            if file.etag:
                kwargs.update(etag=file.etag, match_condition=MatchConditions.IfNotModified)
            stream = blob.download_blob(**kwargs)
            for chunk in stream.chunks():
                while len(chunk) > CHUNK:
                    yield chunk[:CHUNK]
                    chunk = chunk[CHUNK:]
                if chunk:
                    yield chunk
        except GeneratorExit:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._map(exc, file.path) from None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # noqa: BLE001 - closing a broken client may itself fail
                    pass
                self._client = None


def _session(pool: int):
    """A requests session whose pool holds one connection per worker thread."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
