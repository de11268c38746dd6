"""``s3://bucket/prefix`` through s3fs (aiobotocore), configured the way KServe's initializer is.

Environment (KServe's names): AWS_ENDPOINT_URL, or S3_ENDPOINT (host:port) with S3_USE_HTTPS;
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; AWS_DEFAULT_REGION / AWS_REGION;
AWS_CA_BUNDLE; S3_VERIFY_SSL=0; awsAnonymousCredential=true; S3_USER_VIRTUAL_BUCKET=true.
Without keys, botocore's default chain applies (IRSA web identity, instance profile).

Listing uses ListObjectsV2 directly so that ``s3://b/model`` lists ``model/...`` and never
``model-v2/...``; directory markers (keys ending in "/") are dropped, zero-byte objects kept.
Reads are ranged GETs with ``If-Match`` on the listed ETag, so an object replaced mid-download
fails loudly instead of splicing two versions.
"""

from __future__ import annotations

from collections.abc import Iterator
from posixpath import basename

from storage.errors import (
    AccessDeniedError,
    BadURIError,
    IntegrityError,
    NotFoundError,
    StorageError,
    TransientError,
)
from storage.hashing import s3_etag_md5
from storage.sources.base import CHUNK, Listing, RemoteFile, Source, relative_under, safe_relpath
from storage.sources.streaming import read_up_to

_TRUE = ("1", "true", "yes", "on")


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Source(Source):
    def __init__(self, uri, env=None):
        super().__init__(uri, env)
        rest = uri[len("s3://"):] if uri.lower().startswith("s3://") else ""
        self.bucket, _, self.key = rest.partition("/")
        if not self.bucket or "/" in self.bucket or " " in self.bucket:
            raise BadURIError(f"{self.describe()}: expected s3://BUCKET[/PREFIX]")
        self.key = self.key.strip("/") if self.key.endswith("/") else self.key
        self._fs = None

    # -- configuration ---------------------------------------------------------------------------
    def endpoint_url(self) -> str | None:
        env = self.env
        if env.get("AWS_ENDPOINT_URL"):
            return env["AWS_ENDPOINT_URL"]
        if env.get("S3_ENDPOINT"):
            https = env.get("S3_USE_HTTPS", "1").strip().lower() not in ("0", "false", "no")
            host = env["S3_ENDPOINT"].split("://", 1)[-1]
            return f"{'https' if https else 'http'}://{host}"
        return None

    def secrets(self) -> list[str]:
        return [v for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") if (v := self.env.get(k))]

    @property
    def fs(self):
        if self._fs is None:
            import s3fs

            env, s = self.env, self.settings
            client_kwargs: dict = {}
            region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
            if region:
                client_kwargs["region_name"] = region
            if env.get("S3_VERIFY_SSL", "").strip().lower() in ("0", "false", "no"):
                client_kwargs["verify"] = False
            elif env.get("AWS_CA_BUNDLE"):
                client_kwargs["verify"] = env["AWS_CA_BUNDLE"]
            config_kwargs: dict = {
                "connect_timeout": s.connect_timeout,
                "read_timeout": s.stall_timeout,
                "retries": {"total_max_attempts": 1},  # the engine retries, resuming by range
                "max_pool_connections": s.concurrency + 4,
            }
            if env.get("S3_USER_VIRTUAL_BUCKET", "").strip().lower() in _TRUE:
                config_kwargs["s3"] = {"addressing_style": "virtual"}
            anon = env.get("awsAnonymousCredential", "").strip().lower() in _TRUE
            fs = s3fs.S3FileSystem(
                anon=anon,
                key=None if anon else env.get("AWS_ACCESS_KEY_ID"),
                secret=None if anon else env.get("AWS_SECRET_ACCESS_KEY"),
                token=None if anon else env.get("AWS_SESSION_TOKEN"),
                endpoint_url=self.endpoint_url(),
                client_kwargs=client_kwargs,
                config_kwargs=config_kwargs,
                skip_instance_cache=True,
                use_listings_cache=False,
            )
            fs.retries = 1
            self._fs = fs
        return self._fs

    def _call(self, coro_fn, *args, **kwargs):
        from fsspec.asyn import sync

        return sync(self.fs.loop, coro_fn, *args, **kwargs)

    def _map(self, exc: BaseException, what: str) -> StorageError:
        code = _error_code(exc)
        where = f"{self.describe()}"
        if isinstance(exc, StorageError):
            return exc
        if code in ("NoSuchBucket",):
            return NotFoundError(f"{where}: bucket {self.bucket!r} does not exist")
        if code in ("NoSuchKey", "404", "NotFound") or isinstance(exc, FileNotFoundError):
            msg = str(exc)
            if "bucket" in msg.lower() and "not exist" in msg.lower():
                return NotFoundError(f"{where}: bucket {self.bucket!r} does not exist")
            return NotFoundError(f"{where}: {what} not found")
        if code == "PreconditionFailed":
            return IntegrityError(f"{where}: {what} changed on the server during the download; run it again")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled",
                    "ExpiredToken", "InvalidToken") or isinstance(exc, PermissionError):
            return AccessDeniedError(f"{where}: access denied ({code or 'HTTP 403'}); check AWS_ACCESS_KEY_ID, "
                                     "AWS_SECRET_ACCESS_KEY and the bucket policy")
        if code in ("InvalidBucketName",):
            return BadURIError(f"{where}: {self.bucket!r} is not a valid bucket name")
        return TransientError(f"{where}: {type(exc).__name__} {code} while reading {what}".rstrip())

    # -- Source ----------------------------------------------------------------------------------
    def list(self) -> Listing:
        try:
            files = self._list_prefix()
            if not files and self.key:
                files = [self._head_exact()]
        except Exception as exc:  # noqa: BLE001 - every failure becomes one of ours
            raise self._map(exc, "the listing") from None
        if not files:
            raise NotFoundError(f"{self.describe()}: no objects under this prefix")
        return Listing(files)

    def _list_prefix(self) -> list[RemoteFile]:
        prefix = f"{self.key}/" if self.key else ""
        files, token = [], None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(self.fs._call_s3, "list_objects_v2", **kwargs)
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue  # a directory marker, not content
                rel = relative_under(self.key, key)
                if rel is None:
                    continue
                files.append(self._entry(rel, key, obj["Size"], obj.get("ETag")))
            if not page.get("IsTruncated"):
                return files
            token = page.get("NextContinuationToken")

    def _head_exact(self) -> RemoteFile:
        head = self._call(self.fs._call_s3, "head_object", Bucket=self.bucket, Key=self.key)
        return self._entry(basename(self.key), self.key, head["ContentLength"], head.get("ETag"), head.get("VersionId"))

    def _entry(self, rel, key, size, etag, version=None) -> RemoteFile:
        checksums = {}
        md5 = s3_etag_md5(etag)
        if md5:
            checksums["md5"] = md5
        return RemoteFile(path=safe_relpath(rel, self.uri), key=key, size=int(size), etag=etag,
                          version=version, checksums=checksums)

    def read(self, file: RemoteFile, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if file.size == 0 or (end is not None and end <= start):
            return
        kwargs = {"Bucket": self.bucket, "Key": file.key,
                  "Range": f"bytes={start}-{'' if end is None else end - 1}"}
        if file.etag:
            kwargs["IfMatch"] = file.etag
        if file.version:
            kwargs["VersionId"] = file.version
        body = None
        try:
            resp = self._call(self.fs._call_s3, "get_object", **kwargs)
            body = resp["Body"]
            while True:
                chunk = self._call(read_up_to, body, CHUNK)
                if not chunk:
                    return
                yield chunk
        except GeneratorExit:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._map(exc, file.path) from None
        finally:
            if body is not None:
                try:
                    body.close()
                except Exception:  # noqa: BLE001 - closing a broken stream may itself fail
                    pass

    def close(self) -> None:
        self._fs = None
