"""Hashes the engine computes while bytes are written, and the checks against source checksums."""

from __future__ import annotations

import base64
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


def new_checker(algorithm: str):
    """A streaming hasher for a source checksum algorithm, or None when we cannot check it."""
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "crc32c":
        return _Crc32c()
    return None


def checker_value(algorithm: str, hasher) -> str:
    if algorithm == "crc32c":
        return hasher.b64()
    return hasher.hexdigest()


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


class _Crc32c:
    """CRC32C (Castagnoli), streaming, pure Python table-driven: used only for GCS objects
    that carry no MD5 (composite objects). google-crc32c is faster when installed."""

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
