"""Push an OCI layout's image to a registry, and inspect an image wherever it lives.

Contract of :func:`push`: every blob the manifest names is in the target repository (uploaded
only when a HEAD says it is missing, in parallel, bounded), then the manifest is PUT under the
tag. A failure leaves the tag untouched: the manifest goes last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from oci import mediatypes as mt
from oci.auth import Credentials
from oci.errors import LayoutError
from oci.layout import Layout, split_layout_ref
from oci.reference import Reference, parse
from oci.registry import RegistryClient


@dataclass
class PushResult:
    reference: str
    digest: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)


def client_for(ref: Reference, *, insecure: bool = False, credentials: Credentials | None = None,
               env: Mapping[str, str] | None = None, **kwargs) -> RegistryClient:
    return RegistryClient(ref.api_host, insecure=insecure, credentials=credentials,
                          env=env if env is not None else os.environ, **kwargs)


def push(layout: str | os.PathLike, ref: str, *, insecure: bool = False, credentials: Credentials | None = None,
         jobs: int = 4, mount_from: str | None = None, env: Mapping[str, str] | None = None,
         client: RegistryClient | None = None) -> PushResult:
    """Push the image ``layout`` names (``DIR`` or ``oci:DIR:TAG``) to ``ref``."""
    target = parse(ref)
    root, tag = split_layout_ref(str(layout))
    lay = Layout(root)
    entry = _pick(lay, tag, target)
    manifest_bytes = lay.read_blob(entry["digest"])
    manifest = json.loads(manifest_bytes)
    blobs = [manifest["config"], *manifest.get("layers", [])]
    for b in blobs:
        if not lay.has_blob(b["digest"], b["size"]):
            raise LayoutError(f"{root}: blob {b['digest']} is missing or truncated; rebuild the layout")
    own = client is None
    client = client or client_for(target, insecure=insecure, credentials=credentials, env=env, pool_size=jobs + 2)
    result = PushResult(reference=str(target), digest="")
    try:
        client.ping()  # fail fast, with one clear line, when the host is no registry
        def one(blob: dict) -> tuple[str, str]:
            if client.head_blob(target.repository, blob["digest"]) is not None:
                return "skipped", blob["digest"]
            how = client.upload_blob(target.repository, blob["digest"], blob["size"], lay.blob_path(blob["digest"]),
                                     mount_from=mount_from)
            return how, blob["digest"]

        unique = list({b["digest"]: b for b in blobs}.values())
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(unique)))) as pool:
            for how, digest in pool.map(one, unique):
                getattr(result, how).append(digest)
        media_type = manifest.get("mediaType", mt.MANIFEST)
        result.digest = client.put_manifest(target.repository, target.tag or target.digest or "latest",
                                            manifest_bytes, media_type)
    finally:
        if own:
            client.close()
    return result


def _pick(lay: Layout, tag: str | None, target: Reference) -> dict:
    if tag is not None:
        return lay.resolve(tag)
    try:
        return lay.resolve(None)
    except LayoutError:
        return lay.resolve(target.tag or "latest")


def inspect(ref: str, *, insecure: bool = False, credentials: Credentials | None = None,
            env: Mapping[str, str] | None = None, platform: str | None = None) -> dict:
    """Manifest digest, manifest and config of ``ref``: ``oci:DIR[:TAG]`` or a registry reference."""
    if ref.startswith("oci:") and not ref.startswith("oci://"):
        root, tag = split_layout_ref(ref)
        lay = Layout(root)
        entry = lay.resolve(tag)
        manifest = lay.read_json(entry["digest"])
        config = lay.read_json(manifest["config"]["digest"])
        return {"reference": ref, "digest": entry["digest"], "manifest": manifest, "config": config}
    target = parse(ref)
    client = client_for(target, insecure=insecure, credentials=credentials, env=env)
    try:
        manifest, digest = client.resolve(target.repository, target.reference, platform)
        cfg = manifest["config"]
        raw = client.read_small_blob(target.repository, cfg["digest"])
    finally:
        client.close()
    try:
        config = json.loads(raw)
    except ValueError:
        config = {}
    return {"reference": str(target), "digest": digest, "manifest": manifest, "config": config}

