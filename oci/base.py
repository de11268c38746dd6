"""Bring a base image (``--base``) into the output layout: from a registry or ``oci:LAYOUT[:TAG]``.

The base's layers are copied (hard-linked where possible) or downloaded, digest-verified, into
the layout, so the built image is complete on disk and can be pushed anywhere.
"""

from __future__ import annotations

import json
import os
import shutil

from oci import mediatypes as mt
from oci.errors import BuildError, LayoutError
from oci.layout import Layout, split_layout_ref


def load_base(spec: str, layout: Layout, platform: str, opts) -> tuple[list[dict], dict]:
    """(layer descriptors, image config) of the base image, its blobs now in ``layout``."""
    if spec.startswith("oci:") and not spec.startswith("oci://"):
        manifest, config = _from_layout(spec, layout, platform)
    else:
        manifest, config = _from_registry(spec, layout, platform, opts)
    layers = []
    for layer in manifest.get("layers", []):
        d = dict(layer)
        d["mediaType"] = mt.to_oci_layer(d["mediaType"])
        if mt.unpack_kind(d["mediaType"]) is None:
            raise BuildError(f"--base {spec}: layer {d['digest']} has media type {layer['mediaType']}, not a tar layer")
        layers.append(d)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(layers):
        raise BuildError(f"--base {spec}: its config lists {len(diff_ids)} diff_ids for {len(layers)} layers")
    return layers, config


def _from_layout(spec: str, layout: Layout, platform: str) -> tuple[dict, dict]:
    root, tag = split_layout_ref(spec)
    src = Layout(root)
    try:
        entry = src.resolve(tag)
        manifest = src.read_json(entry["digest"])
        if "manifests" in manifest:
            from oci.registry import select_platform

            entry = select_platform(manifest["manifests"], platform)
            if entry is None:
                raise BuildError(f"--base {spec}: no image for {platform} in its index")
            manifest = src.read_json(entry["digest"])
        config = src.read_json(manifest["config"]["digest"])
    except LayoutError as exc:
        raise BuildError(f"--base {spec}: {exc}") from exc
    for layer in manifest.get("layers", []):
        if layout.has_blob(layer["digest"], layer["size"]):
            continue
        source = src.blob_path(layer["digest"])
        if not src.has_blob(layer["digest"], layer["size"]):
            raise BuildError(f"--base {spec}: blob {layer['digest']} is missing from the layout")
        layout.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = layout.tmp_dir / f".base-{os.getpid()}-{layer['digest'][7:19]}"
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        layout.commit(tmp, layer["digest"])
    return manifest, config


def _from_registry(spec: str, layout: Layout, platform: str, opts) -> tuple[dict, dict]:
    from oci.push import client_for
    from oci.reference import parse

    ref = parse(spec)
    client = client_for(ref, insecure=opts.insecure, env=opts.env)
    try:
        manifest, _ = client.resolve(ref.repository, ref.reference, platform)
        cfg = manifest["config"]
        config = json.loads(client.read_small_blob(ref.repository, cfg["digest"]))
        for layer in manifest.get("layers", []):
            if not layout.has_blob(layer["digest"], layer["size"]):
                client.fetch_blob(ref.repository, layer["digest"], layout.blob_path(layer["digest"]), layer["size"])
    finally:
        client.close()
    return manifest, config
