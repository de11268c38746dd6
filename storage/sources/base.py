"""The contract every source (one per URI scheme) fulfils.

A source knows two things: how to *list* what a URI names, and how to *read a byte range* of one
listed file. It knows nothing of staging, retries, hashing, progress or publishing: the engine
(`storage.engine`) owns those, so a new scheme is one small module and the engine never changes.

Contract:
- ``list()`` returns every file the URI names, with the path it takes under DEST. A prefix
  ``scheme://bucket/model`` lists the objects under ``model/`` (never ``model-v2/...``), relative
  to it; an exact object key lists that object as its basename. Directory markers are dropped;
  zero-byte objects are kept.
- ``read(file, start, end, meta=None)`` yields the bytes ``[start, end)`` of ``file`` in order, in
  chunks of at most a few MiB, and never buffers a whole file. ``end=None`` means "to the end".
  When the caller passes a dict as ``meta`` and the response carries a checksum of the *whole
  object* (S3's ``x-amz-checksum-crc32`` on an unranged GET), the source stores it, before the
  first chunk is yielded, as ``meta["checksums"] = {algorithm: value}`` in ``RemoteFile.checksums``'
  conventions; the engine may then verify that instead of a slower listed checksum. Sources that
  learn nothing from a response leave ``meta`` alone; a checksum of part of an object, or one that
  is not a plain digest of the bytes (S3's composite "...-N"), is never reported.
- Failures are raised as ``storage.errors`` types: permanent ones (NotFound, AccessDenied,
  BadURI) fail the download at once; ``TransientError`` (5xx, 429, reset, timeout, truncation) is
  retried by the engine from the byte it stopped at. A message names the URI, never a secret.
"""

from __future__ import annotations

import os
import posixpath
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from storage.config import Settings
from storage.errors import BadURIError

CHUNK = 1 << 20  # read granularity: bounds memory per connection


@dataclass(frozen=True)
class RemoteFile:
    """One file a source lists.

    ``path`` is the POSIX path relative to DEST. ``key`` is whatever the source needs to read it
    (an object key, a URL). ``size`` is None only when the source cannot know it in advance.
    ``checksums`` maps an algorithm (``md5``, ``sha1``, ``sha256``, ``crc32``, ``crc32c``,
    ``sha256-digest``) to the value the source promises, lowercase hex (``crc32``/``crc32c``: base64
    of the big-endian value, as the stores send it).
    ``etag`` / ``version`` identify the remote content: equal etag+size means unchanged.
    ``alt_checksums`` holds more checksums of the same content in the same form (GCS lists a
    CRC32C beside the MD5): the engine verifies one of them instead of ``checksums`` when that is
    cheaper to compute. They are not part of ``identity()``, so offering one more never makes a
    downloaded copy look stale.
    """

    path: str
    key: str
    size: int | None
    checksums: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    etag: str | None = None
    version: str | None = None
    #: When set, the file is an archive the engine streams into DEST instead of storing it:
    #: "tar", "tar+gzip", "tar+zstd" or "zip". Only entries under ``unpack_prefix`` are kept,
    #: with that prefix stripped (an OCI layer's "models/"). Several unpack files are applied in
    #: listing order, later ones overriding earlier ones (image layer semantics).
    unpack: str | None = None
    unpack_prefix: str = ""
    alt_checksums: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def identity(self) -> dict:
        """What must be equal for a local copy to count as this remote file."""
        return {"size": self.size, "etag": self.etag, "version": self.version, "checksums": dict(self.checksums)}


@dataclass
class Listing:
    """What a URI names: its files and, where the source has one, the resolved revision."""

    files: list[RemoteFile]
    revision: str | None = None


class Source(ABC):
    """One URI of one scheme. Instances are used from many threads at once: keep them so."""

    #: True when ``read`` honours ``start > 0`` cheaply (HTTP Range, S3 ranged GET).
    supports_ranges: bool = True

    def __init__(self, uri: str, env: Mapping[str, str] | None = None):
        self.uri = uri
        self.env: dict[str, str] = dict(os.environ if env is None else env)
        self.settings = Settings.from_env(self.env)

    @abstractmethod
    def list(self) -> Listing:
        """Every file under the URI; raises NotFoundError when it names nothing."""

    @abstractmethod
    def read(self, file: RemoteFile, start: int = 0, end: int | None = None,
             meta: dict | None = None) -> Iterator[bytes]:
        """Yield ``file``'s bytes from ``start`` to ``end`` (exclusive) in order; report whole-object
        checksums the response carries into ``meta`` (see the module docstring)."""

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release connections. Called once, after the download."""

    def describe(self) -> str:
        """The URI as it may appear in logs and errors (credentials stripped)."""
        return redact_uri(self.uri)


def redact_uri(uri: str) -> str:
    """Drop userinfo and secret-looking query parameters (SAS signatures, tokens) from a URI."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if "@" not in parts.netloc and not parts.query:
        return uri  # nothing to hide: keep it exactly as the user wrote it
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        secretish = ("sig", "signature", "token", "key", "secret", "password", "credential", "auth")
        pairs = [
            (k, "REDACTED" if any(s in k.lower() for s in secretish) else v)
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def relative_under(prefix: str, key: str) -> str | None:
    """Path of ``key`` relative to the directory ``prefix``; None when key is not below it.

    ``prefix`` "model" matches "model/a.bin" but not "model-v2/a.bin"; an empty prefix matches all.
    """
    prefix = prefix.strip("/")
    if not prefix:
        rel = key
    elif key.startswith(prefix + "/"):
        rel = key[len(prefix) + 1 :]
    else:
        return None
    return rel or None


def safe_relpath(rel: str, uri: str) -> str:
    """Normalize a listed relative path; refuse one that would leave DEST."""
    norm = posixpath.normpath(rel.lstrip("/"))
    if norm in (".", "") or norm.startswith("../") or norm == ".." or "\x00" in norm:
        raise BadURIError(f"{redact_uri(uri)}: the source lists an unsafe path {rel!r}; refusing to write it")
    if norm.split("/", 1)[0] == ".modeldepot":
        raise BadURIError(f"{redact_uri(uri)}: the source lists {rel!r}, a name modeldepot reserves for its manifest")
    return norm
