"""Pull an image's model files into a directory.

With the storage engine present this is exactly ``storage.download("oci://REF", DEST)``: the same
staging, verification, manifest and atomic publish as every other source. Until then a minimal
path streams each layer through the engine's safe extractor, verifying its digest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from oci.errors import DigestMismatchError


def pull(ref: str, dest: str | os.PathLike, *, env: Mapping[str, str] | None = None) -> str:
    """Download ``ref``'s model files into ``dest``; returns the manifest digest."""
    uri = ref if ref.startswith("oci://") else f"oci://{ref}"
    env = dict(env if env is not None else os.environ)
    try:
        from storage import download
    except ImportError:
        return _pull_without_engine(uri, Path(dest), env)
    result = download(uri, str(dest), env=env)
    return getattr(result, "revision", None) or ""


def _pull_without_engine(uri: str, dest: Path, env: Mapping[str, str]) -> str:
    from storage.archive import extract_tar
    from storage.sources.oci import OciSource

    source = OciSource(uri, env)
    try:
        listing = source.list()
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".modelcar-pull-", dir=dest.parent))
        try:
            for f in listing.files:
                h = hashlib.sha256()

                def hashed(f=f, h=h):
                    for chunk in source.read(f):
                        h.update(chunk)
                        yield chunk

                if f.unpack:
                    extract_tar(hashed(), f.unpack, staging, prefix=f.unpack_prefix, what=source.describe())
                else:
                    target = staging / f.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as fh:
                        for chunk in hashed():
                            fh.write(chunk)
                if h.hexdigest() != f.checksums.get("sha256"):
                    raise DigestMismatchError(f"{source.describe()}: layer {f.key} arrived corrupted; pull again")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        source.close()
    return listing.revision or ""
