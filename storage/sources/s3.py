"""``s3://bucket/prefix`` through botocore, configured the way KServe's initializer is.

Environment (KServe's names): AWS_ENDPOINT_URL, or S3_ENDPOINT (host:port) with S3_USE_HTTPS;
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; AWS_DEFAULT_REGION / AWS_REGION;
AWS_CA_BUNDLE; S3_VERIFY_SSL=0; awsAnonymousCredential=true; S3_USER_VIRTUAL_BUCKET=true.
Without keys, botocore's default chain applies (IRSA web identity, instance profile).

Listing uses ListObjectsV2 so that ``s3://b/model`` lists ``model/...`` and never
``model-v2/...``; directory markers (keys ending in "/") are dropped, zero-byte objects kept.
Reads are GETs with ``If-Match`` on the listed ETag, so an object replaced mid-download fails
loudly instead of splicing two versions. A read of a whole object sends no ``Range`` and asks for
its checksum (``x-amz-checksum-mode: ENABLED``); S3 then answers with the full-object CRC32 /
CRC32C / SHA-1 / SHA-256 / CRC64NVME stored with it (boto3 >= 1.36 stores a CRC32 by default), and
``read`` reports it through ``meta`` so the engine can verify that rather than the ETag's MD5 —
zlib's CRC32 is ~6x cheaper than MD5. Ranged GETs carry no checksum (S3 sends none for a range).
botocore's own response validation is off (``response_checksum_validation="when_required"``): it
would hash every body a second time, and the engine verifies anyway.

Why botocore's synchronous client and not s3fs: s3fs (over aiobotocore) funnels every byte of
every connection through one asyncio thread and hands each chunk across threads; the benchmark
showed that path holding the GIL 60-65 % of the time and the import alone costing 1.1-1.6 s. The
synchronous client reads with urllib3 in the engine's worker threads, which release the GIL while
they wait on the socket — the same model as our HTTP source.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from posixpath import basename

from storage.errors import (
    AccessDeniedError,
    BadURIError,
    IntegrityError,
    NotFoundError,
    StorageError,
    TransientError,
)
from storage.hashing import b64_digest_to_hex, s3_etag_md5
from storage.sources.base import CHUNK, Listing, RemoteFile, Source, relative_under, safe_relpath

_TRUE = ("1", "true", "yes", "on")
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "401", "AllAccessDisabled",
           "ExpiredToken", "InvalidToken", "AccountProblem"}


def _parse_timestamp(value):
    """A timestamp from an S3 response as a datetime, equal to what botocore's default parser
    gives: RFC 7231 dates (headers) and ISO 8601 (XML) directly, anything else through it."""
    try:
        if isinstance(value, str) and value.endswith("GMT"):
            return parsedate_to_datetime(value)
        if isinstance(value, str) and "T" in value:
            return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        pass
    from botocore.utils import parse_timestamp

    return parse_timestamp(value)


def _ask_for_checksum(request, **_) -> None:
    """before-sign hook on GetObject: a GET without Range reads a whole object; ask S3 for its
    stored checksum. Added before signing so SigV4 covers the header."""
    if "Range" not in request.headers:
        request.headers["x-amz-checksum-mode"] = "ENABLED"


def response_checksums(headers: dict) -> dict[str, str]:
    """Full-object checksums in a GetObject response's (lower-cased) headers, as
    ``RemoteFile.checksums`` holds them. Composite checksums (multipart uploads: "...-N", or
    ``x-amz-checksum-type: COMPOSITE``) are a checksum of part checksums, not of the bytes: dropped."""
    if headers.get("x-amz-checksum-type", "").upper() == "COMPOSITE":
        return {}
    found = {}
    for name, value in headers.items():
        if not name.startswith("x-amz-checksum-") or name in ("x-amz-checksum-type", "x-amz-checksum-mode"):
            continue
        value = value.strip()
        if not value or "-" in value:
            continue
        algorithm = name[len("x-amz-checksum-"):]
        if algorithm in ("sha1", "sha256"):
            value = b64_digest_to_hex(value)
            if value is None:
                continue
        found[algorithm] = value
    return found


def _error_code(exc: BaseException) -> tuple[str, int | None]:
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(response.get("Error", {}).get("Code", "")), status


class S3Source(Source):
    def __init__(self, uri, env=None):
        super().__init__(uri, env)
        rest = uri[len("s3://"):] if uri.lower().startswith("s3://") else ""
        self.bucket, _, self.key = rest.partition("/")
        if not self.bucket or "/" in self.bucket or " " in self.bucket:
            raise BadURIError(f"{self.describe()}: expected s3://BUCKET[/PREFIX]")
        self.key = self.key.strip("/") if self.key.endswith("/") else self.key
        self._client = None
        self._lock = threading.Lock()

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
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self):
        import botocore.session
        from botocore import UNSIGNED
        from botocore.config import Config

        env, s = self.env, self.settings
        anon = env.get("awsAnonymousCredential", "").strip().lower() in _TRUE
        verify: bool | str | None = None
        if env.get("S3_VERIFY_SSL", "").strip().lower() in ("0", "false", "no"):
            verify = False
        elif env.get("AWS_CA_BUNDLE"):
            verify = env["AWS_CA_BUNDLE"]
        config = Config(
            connect_timeout=s.connect_timeout,
            read_timeout=s.stall_timeout,
            retries={"total_max_attempts": 1},  # the engine retries, resuming by range
            # We ask for response checksums ourselves (_ask_for_checksum) and the engine checks
            # them; botocore's "when_supported" would set ChecksumMode on every GetObject and hash
            # each whole-object body a second time. We upload nothing, so the request side is moot.
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
            max_pool_connections=s.concurrency + 4,
            signature_version=UNSIGNED if anon else None,
            s3={"addressing_style": "virtual"} if env.get("S3_USER_VIRTUAL_BUCKET", "").strip().lower() in _TRUE
            else None,
        )
        session = botocore.session.get_session()
        # botocore parses every timestamp (LastModified on each GetObject and listed object) with
        # dateutil's generic parser: ~0.2 ms each, 9 % of the ~3.4 ms of CPU a GetObject costs.
        # The two forms S3 sends parse in ~10 us with the standard library. This session is ours.
        session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
        region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None
        if region is None and self.endpoint_url():
            region = "us-east-1"  # S3-compatible servers: any region signs; botocore insists on one
        client = session.create_client(
            "s3",
            region_name=region,
            endpoint_url=self.endpoint_url(),
            verify=verify,
            aws_access_key_id=None if anon else env.get("AWS_ACCESS_KEY_ID") or None,
            aws_secret_access_key=None if anon else env.get("AWS_SECRET_ACCESS_KEY") or None,
            aws_session_token=None if anon else env.get("AWS_SESSION_TOKEN") or None,
            config=config,
        )
        client.meta.events.register("before-sign.s3.GetObject", _ask_for_checksum)
        return client

    def _map(self, exc: BaseException, what: str) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        from botocore import exceptions as bx

        where = self.describe()
        code, status = _error_code(exc)
        if isinstance(exc, bx.NoCredentialsError):
            return AccessDeniedError(f"{where}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                                     "AWS_SECRET_ACCESS_KEY, or awsAnonymousCredential=true for a public bucket")
        if isinstance(exc, bx.FlexibleChecksumError):  # botocore validation is off; in case it surfaces
            return IntegrityError(f"{where}: {what} failed the checksum S3 stored with it; run it again")
        if isinstance(exc, bx.ParamValidationError):
            return BadURIError(f"{where}: the bucket or key is not valid for S3")
        if code == "NoSuchBucket":
            return NotFoundError(f"{where}: bucket {self.bucket!r} does not exist")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return NotFoundError(f"{where}: {what} not found")
        if code == "PreconditionFailed" or status == 412:
            return IntegrityError(f"{where}: {what} changed on the server during the download; run it again")
        if code in _DENIED or status in (401, 403):
            return AccessDeniedError(f"{where}: access denied ({code or status}); check AWS_ACCESS_KEY_ID, "
                                     "AWS_SECRET_ACCESS_KEY and the bucket policy")
        if code == "InvalidBucketName":
            return BadURIError(f"{where}: {self.bucket!r} is not a valid bucket name")
        detail = f"HTTP {status} {code}" if status else type(exc).__name__
        return TransientError(f"{where}: {detail} while reading {what}")

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
        files = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue  # a directory marker, not content
                rel = relative_under(self.key, key)
                if rel is not None:
                    files.append(self._entry(rel, key, obj["Size"], obj.get("ETag")))
        return files

    def _head_exact(self) -> RemoteFile:
        head = self.client.head_object(Bucket=self.bucket, Key=self.key)
        return self._entry(basename(self.key), self.key, head["ContentLength"], head.get("ETag"), head.get("VersionId"))

    def _entry(self, rel, key, size, etag, version=None) -> RemoteFile:
        checksums = {}
        md5 = s3_etag_md5(etag)
        if md5:
            checksums["md5"] = md5
        return RemoteFile(path=safe_relpath(rel, self.uri), key=key, size=int(size), etag=etag,
                          version=version, checksums=checksums)

    def read(self, file: RemoteFile, start: int = 0, end: int | None = None,
             meta: dict | None = None) -> Iterator[bytes]:
        if file.size == 0 or (end is not None and end <= start):
            return
        whole = start == 0 and end in (None, file.size)
        kwargs = {"Bucket": self.bucket, "Key": file.key}
        if not whole:  # without Range, _ask_for_checksum asks for the object's checksum
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if file.etag:
            kwargs["IfMatch"] = file.etag
        if file.version:
            kwargs["VersionId"] = file.version
        body = None
        try:
            response = self.client.get_object(**kwargs)
            body = response["Body"]
            if whole and meta is not None:
                checksums = response_checksums(response.get("ResponseMetadata", {}).get("HTTPHeaders", {}))
                if checksums:
                    meta["checksums"] = checksums
            while chunk := body.read(CHUNK):
                yield chunk
        except GeneratorExit:
            raise
        except Exception as exc:  # noqa: BLE001 - resets, timeouts, short bodies, S3 errors
            raise self._map(exc, file.path) from None
        finally:
            if body is not None:
                body.close()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
