"""An OCI image layout on disk (image-spec ``image-layout.md``).

``DIR/oci-layout``, ``DIR/index.json`` and ``DIR/blobs/sha256/<hex>``. Blobs are content
addressed and immutable: they are written to a temp file in ``DIR/blobs/.tmp`` and renamed to
their digest only when complete, so a crash never leaves a blob that does not match its name.
Tags are ``org.opencontainers.image.ref.name`` annotations on ``index.json`` entries.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from oci import mediatypes as mt
from oci.errors import LayoutError


def canonical_json(obj) -> bytes:
    """The one byte form we write for a JSON object, so equal objects get equal digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def descriptor(media_type: str, digest: str, size: int, annotations: dict | None = None, **extra) -> dict:
    d = {"mediaType": media_type, "digest": digest, "size": size}
    d.update(extra)
    if annotations:
        d["annotations"] = dict(annotations)
    return d


def split_layout_ref(text: str) -> tuple[Path, str | None]:
    """``oci:DIR[:TAG]`` (or ``DIR[:TAG]``) → (DIR, TAG or None)."""
    if text.startswith("oci:"):
        text = text[4:]
    head, colon, tail = text.rpartition(":")
    if colon and head and "/" not in tail:
        return Path(head), tail
    return Path(text), None


class Layout:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # -- creation and blobs ----------------------------------------------------------------
    def create(self) -> Layout:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        marker = self.root / "oci-layout"
        if not marker.exists():
            _atomic_write(marker, canonical_json({"imageLayoutVersion": mt.OCI_LAYOUT_VERSION}))
        if not (self.root / "index.json").exists():
            self._write_index({"schemaVersion": 2, "mediaType": mt.INDEX, "manifests": []})
        return self

    @property
    def tmp_dir(self) -> Path:
        return self.root / ".modelcar-tmp"

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or len(hexpart) != 64:
            raise LayoutError(f"{self.root}: unsupported digest {digest!r}; only sha256 is handled")
        return self.root / "blobs" / "sha256" / hexpart

    def tidy(self) -> None:
        """Remove the temp directory when empty: a finished layout holds only spec'd files."""
        try:
            self.tmp_dir.rmdir()
        except OSError:
            pass

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            st = self.blob_path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def commit(self, tmp: Path, digest: str) -> Path:
        """Move a completed temp file to its digest's path (or drop it if already present)."""
        final = self.blob_path(digest)
        if final.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, final)
        return final

    def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest, len(data)):
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.tmp_dir / f".bytes-{os.getpid()}-{digest[7:19]}"
            tmp.write_bytes(data)
            self.commit(tmp, digest)
        return digest

    def put_json(self, media_type: str, obj, annotations: dict | None = None, **extra) -> dict:
        data = canonical_json(obj)
        return descriptor(media_type, self.put_bytes(data), len(data), annotations, **extra)

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise LayoutError(f"{self.root}: blob {digest} is missing; rebuild the layout") from exc

    def read_json(self, digest: str) -> dict:
        data = self.read_blob(digest)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise LayoutError(f"{self.root}: blob {digest} is corrupt; rebuild the layout")
        return json.loads(data)

    # -- index and tags --------------------------------------------------------------------
    def index(self) -> dict:
        try:
            return json.loads((self.root / "index.json").read_text())
        except FileNotFoundError as exc:
            raise LayoutError(f"{self.root}: not an OCI image layout (no index.json)") from exc
        except ValueError as exc:
            raise LayoutError(f"{self.root}: index.json is not valid JSON; rebuild the layout") from exc

    def tag(self, manifest_desc: dict, name: str) -> None:
        """Point ``name`` at ``manifest_desc`` in index.json, replacing what it named before."""
        index = self.index()
        kept = [m for m in index.get("manifests", []) if m.get("annotations", {}).get(mt.ANN_REF_NAME) != name]
        entry = dict(manifest_desc)
        entry["annotations"] = {**entry.get("annotations", {}), mt.ANN_REF_NAME: name}
        index["manifests"] = kept + [entry]
        self._write_index(index)

    def resolve(self, name: str | None = None) -> dict:
        """The index entry tagged ``name``; with no name, the only entry (or an error)."""
        manifests = self.index().get("manifests", [])
        if name is not None:
            for m in manifests:
                if m.get("annotations", {}).get(mt.ANN_REF_NAME) == name:
                    return m
            tags = sorted(m.get("annotations", {}).get(mt.ANN_REF_NAME, "?") for m in manifests)
            raise LayoutError(f"{self.root}: no image tagged {name!r} (tags: {', '.join(tags) or 'none'})")
        if len(manifests) != 1:
            raise LayoutError(f"{self.root}: holds {len(manifests)} images; name one as oci:{self.root}:TAG")
        return manifests[0]

    def _write_index(self, index: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.root / "index.json", json.dumps(index, indent=2, sort_keys=True).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
