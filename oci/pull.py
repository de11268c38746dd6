"""Pull an image's model files into a directory: the storage engine with an ``oci://`` source.

Same staging, digest verification, manifest and atomic publish as every other source; a second
pull of an unchanged image does no network I/O beyond resolving the tag.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def pull(ref: str, dest: str | os.PathLike, *, env: Mapping[str, str] | None = None) -> str:
    """Download ``ref``'s model files into ``dest``; returns the manifest digest it resolved to."""
    from storage import download

    uri = ref if ref.startswith("oci://") else f"oci://{ref}"
    manifest = download(uri, dest, env=dict(env if env is not None else os.environ))
    return manifest.revision or ""
