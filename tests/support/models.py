"""Synthetic model trees and archives (good and hostile) for download tests.

A tree is a ``dict[str, bytes]`` of POSIX relative path -> content, so the same value can be
uploaded to S3, written to disk, packed into an archive and compared with what DEST holds.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

MiB = 1 << 20


def blob(size: int, seed: str | int = 0) -> bytes:
    """``size`` deterministic pseudo-random bytes (incompressible, like weights)."""
    out = bytearray()
    counter = 0
    key = str(seed).encode()
    while len(out) < min(size, 1 << 16):
        out += hashlib.blake2b(key + counter.to_bytes(8, "little"), digest_size=64).digest()
        counter += 1
    if size >= 1 << 16:  # blake2b per 64 bytes is slow for MiBs: repeat a 64 KiB random block
        block = bytes(out[: 1 << 16])
        out = bytearray()
        i = 0
        while len(out) < size:
            out += hashlib.blake2b(key + b"blk" + i.to_bytes(8, "little"), digest_size=8).digest() + block
            i += 1
    return bytes(out[:size])


def nested_tree() -> dict[str, bytes]:
    """The awkward shapes a real model repo has: spaces, non-ASCII, deep nesting, empty files."""
    return {
        "config.json": b'{"model_type": "test", "hidden_size": 64}\n',
        "model.safetensors": blob(3 * MiB + 17, "weights"),
        "tokenizer/vocab.txt": blob(40_000, "vocab"),
        "tokenizer/merges with spaces.txt": blob(1234, "merges"),
        "données/modèle é.bin": blob(70_000, "nonascii"),
        "日本語/トークン.json": b'{"ok": true}\n',
        "a/b/c/d/e/f/g/h/deep.bin": blob(5000, "deep"),
        "empty.txt": b"",
        "sub/empty-too.bin": b"",
    }


def write_tree(root: str | os.PathLike, files: dict[str, bytes]) -> Path:
    root = Path(root)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def upload_tree(s3, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    prefix = prefix.strip("/")
    for rel, data in files.items():
        key = f"{prefix}/{rel}" if prefix else rel
        s3.put_object(Bucket=bucket, Key=key, Body=data)


def read_tree(root: str | os.PathLike) -> dict[str, bytes]:
    """Every regular file under ``root`` except modeldepot's own ``.modeldepot/`` directory."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel == ".modeldepot" or rel.startswith(".modeldepot/"):
            continue
        if p.is_file() and not p.is_symlink():
            out[rel] = p.read_bytes()
    return out


def assert_tree_equal(root: str | os.PathLike, files: dict[str, bytes]) -> None:
    got = read_tree(root)
    assert sorted(got) == sorted(files), (
        f"paths differ: extra {sorted(set(got) - set(files))}, missing {sorted(set(files) - set(got))}"
    )
    for rel, data in files.items():
        assert got[rel] == data, f"{rel}: content differs ({len(got[rel])} bytes vs {len(data)} expected)"


# -- archives ------------------------------------------------------------------------------


def make_tar(path: str | os.PathLike, files: dict[str, bytes], mode: str = "w") -> Path:
    """A tar of ``files``; ``mode`` "w" (plain) or "w:gz"."""
    path = Path(path)
    with tarfile.open(path, mode) as tf:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: str | os.PathLike, files: dict[str, bytes]) -> Path:
    path = Path(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return path


HOSTILE_TAR_CASES = ("absolute", "dotdot", "symlink_escape", "hardlink_escape", "device", "fifo")
HOSTILE_ZIP_CASES = ("absolute", "dotdot", "symlink_escape")


def make_hostile_tar(path: str | os.PathLike, case: str, mode: str = "w") -> Path:
    """A tar with one harmless file and one entry of the hostile ``case``."""
    path = Path(path)
    with tarfile.open(path, mode) as tf:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 3
        tf.addfile(ok, io.BytesIO(b"ok\n"))
        payload = b"pwned\n"
        if case == "absolute":
            info = tarfile.TarInfo("/tmp/modeldepot-pwned-absolute")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        elif case == "dotdot":
            info = tarfile.TarInfo("sub/../../escaped-dotdot.txt")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        elif case == "symlink_escape":
            # A link pointing out of DEST, then a file written through it.
            link = tarfile.TarInfo("link")
            link.type = tarfile.SYMTYPE
            link.linkname = "../../"
            tf.addfile(link)
            info = tarfile.TarInfo("link/escaped-symlink.txt")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        elif case == "hardlink_escape":
            link = tarfile.TarInfo("passwd-link")
            link.type = tarfile.LNKTYPE
            link.linkname = "../../../../../../etc/passwd"
            tf.addfile(link)
        elif case == "device":
            dev = tarfile.TarInfo("null-device")
            dev.type = tarfile.CHRTYPE
            dev.devmajor, dev.devminor = 1, 3
            tf.addfile(dev)
        elif case == "fifo":
            fifo = tarfile.TarInfo("a-fifo")
            fifo.type = tarfile.FIFOTYPE
            tf.addfile(fifo)
        else:
            raise ValueError(case)
    return path


def make_hostile_zip(path: str | os.PathLike, case: str) -> Path:
    path = Path(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", b"ok\n")
        if case == "absolute":
            info = zipfile.ZipInfo("/tmp/modeldepot-pwned-absolute")
            zf.writestr(info, b"pwned\n")
        elif case == "dotdot":
            info = zipfile.ZipInfo("sub/../../escaped-dotdot.txt")
            zf.writestr(info, b"pwned\n")
        elif case == "symlink_escape":
            info = zipfile.ZipInfo("link")
            info.create_system = 3  # Unix, so external_attr carries the mode
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, b"../../")
            zf.writestr("link/escaped-symlink.txt", b"pwned\n")
        else:
            raise ValueError(case)
    return path
