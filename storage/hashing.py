"""Hashes the engine computes while bytes are written, and the checks against source checksums."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import struct

import xxhash

READ_CHUNK = 1 << 20


def new_xxh3():
    return xxhash.xxh3_128()


def xxh3_file(path: str | os.PathLike, start: int = 0) -> str:
    """xxh3-128 hex of a file's contents (used by verify and scrub, never on the download path)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        fh.seek(start)
        while chunk := fh.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


#: Algorithms whose values are base64 of the big-endian digest (as S3, GCS and Azure send them);
#: the others are lowercase hex.
BASE64_ALGORITHMS = ("crc32", "crc32c", "crc64nvme")

#: Rough hashing speed in GB/s on one core of the benchmark machine, for choosing which of two
#: checksums of the same bytes to compute. CRC32C counts only with its C implementation (see
#: ``fast_crc32c``). CRC32 runs on ISA-L (python-isal) at 8.5 GB/s, zlib's 2.7 where isal is
#: missing; CRC64NVME (what S3 stores for objects uploaded without a checksum) on awscrt.
SPEED = {"crc32": 8.5, "crc64nvme": 7.2, "crc32c": 5.0, "sha1": 1.2, "sha256": 1.1, "md5": 0.46}

try:  # ISA-L's CRC32 (PCLMULQDQ): 3x zlib's on the benchmark machine, same values
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - a platform without an isal wheel
    from zlib import crc32 as _crc32

    SPEED["crc32"] = 2.7
try:
    from awscrt.checksums import crc64nvme as _crc64nvme
except ImportError:  # pragma: no cover - a platform without an awscrt wheel
    _crc64nvme = None
    del SPEED["crc64nvme"]


def new_checker(algorithm: str):
    """A streaming hasher for a source checksum algorithm, or None when we cannot check it."""
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "sha1":
        return hashlib.sha1(usedforsecurity=False)
    if algorithm == "crc32":
        return _Crc(_crc32, ">I")
    if algorithm == "crc64nvme" and _crc64nvme is not None:
        return _Crc(_crc64nvme, ">Q")
    if algorithm == "crc32c":
        return _Crc32c()
    return None


def checker_value(algorithm: str, hasher) -> str:
    if algorithm in BASE64_ALGORITHMS:
        return hasher.b64()
    return hasher.hexdigest()


def checksum_matches(algorithm: str, got: str, want: str) -> bool:
    """``got`` (from checker_value) against the source's ``want``: base64 exactly, hex in any case."""
    if algorithm in BASE64_ALGORITHMS:
        return got == want
    return got.lower() == want.lower()


@functools.cache
def fast_crc32c() -> bool:
    """True when CRC32C runs in C (google-crc32c's extension). Its pure-Python fallbacks, ours and
    google-crc32c's, run at a few MB/s: slower than MD5 by two orders of magnitude."""
    try:
        import google_crc32c
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    return getattr(google_crc32c, "implementation", None) == "c"


def _speed(algorithm: str) -> float:
    if algorithm == "crc32c" and not fast_crc32c():
        return 0.005
    return SPEED.get(algorithm, 0.0)


def cheaper_checksum(offered: dict[str, str], current) -> tuple[str, str] | None:
    """The fastest (algorithm, value) in ``offered`` worth computing instead of the checksums
    ``current`` (algorithm names): one we compute at speed and faster than every current one;
    None when there is none (then keep ``current``)."""
    best = max((a for a, v in offered.items() if v and _speed(a) >= 0.1), key=_speed, default=None)
    if best is None or any(_speed(a) >= _speed(best) for a in current):
        return None
    return best, offered[best]


def b64_digest_to_hex(value: str) -> str | None:
    """A base64 digest (S3's x-amz-checksum-sha256 and the like) as lowercase hex; None if not base64."""
    try:
        return base64.b64decode(value.strip(), validate=True).hex()
    except ValueError:
        return None


def normalize_md5(value: str) -> str | None:
    """An MD5 as lowercase hex, from hex or the base64 form GCS and Azure send; None if neither."""
    value = value.strip().strip('"')
    if len(value) == 32:
        try:
            int(value, 16)
            return value.lower()
        except ValueError:
            return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 16 else None


def s3_etag_md5(etag: str | None) -> str | None:
    """The MD5 an S3 ETag stands for, or None for multipart ("...-N") and SSE-KMS-like ETags."""
    if not etag:
        return None
    value = etag.strip().strip('"')
    if "-" in value or len(value) != 32:
        return None
    return normalize_md5(value)


class _Crc:
    """A streaming CRC over a ``fn(data, crc) -> crc`` function, shown as base64 of the big-endian
    value as S3 sends it: CRC32 (zlib's polynomial, on ISA-L when present; x-amz-checksum-crc32)
    and CRC64/NVME (on awscrt; x-amz-checksum-crc64nvme)."""

    __slots__ = ("_fn", "_fmt", "_crc")

    def __init__(self, fn, fmt: str):
        self._fn, self._fmt, self._crc = fn, fmt, 0

    def update(self, data) -> None:
        self._crc = self._fn(data, self._crc)

    def b64(self) -> str:
        return base64.b64encode(struct.pack(self._fmt, self._crc)).decode()


class _Crc32c:
    """CRC32C (Castagnoli), streaming: google-crc32c when installed, else pure Python
    table-driven. The pure-Python path is only for GCS composite objects, which carry no MD5;
    CRC32C is preferred over MD5 only where ``fast_crc32c()`` holds."""

    _table: list[int] | None = None

    def __init__(self):
        try:
            import google_crc32c  # gcsfs pulls it in

            self._fast = google_crc32c.Checksum()
        except ImportError:  # pragma: no cover - depends on the environment
            self._fast = None
            self._crc = 0xFFFFFFFF
            if _Crc32c._table is None:
                _Crc32c._table = _crc32c_table()

    def update(self, data: bytes) -> None:
        if self._fast is not None:
            self._fast.update(data)
            return
        crc, table = self._crc, self._table
        for b in data:
            crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
        self._crc = crc

    def b64(self) -> str:
        if self._fast is not None:
            raw = self._fast.digest()
        else:
            raw = struct.pack(">I", self._crc ^ 0xFFFFFFFF)
        return base64.b64encode(raw).decode()


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table
