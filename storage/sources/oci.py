"""``oci://REGISTRY/REPOSITORY[:TAG|@DIGEST]``: a modelcar image or ModelPack artifact as a source.

Each layer is listed as one archive file the engine streams through its safe tar extractor:
a modelcar keeps only ``models/`` (prefix stripped), a ModelPack artifact keeps its layers' files
as they are. The engine verifies each layer's sha256 while streaming; the listing's revision is
the manifest digest. All HTTP and auth lives in ``oci.registry``, imported lazily.

KServe's environment names apply: ``KSERVE_OCI_DOCKER_CONFIG`` (a docker config.json, or the
directory of a mounted pull secret) and ``KSERVE_OCI_INSECURE_REGISTRY=true`` (plain HTTP).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from storage.sources.base import Listing, RemoteFile, Source, safe_relpath

_TRUE = ("1", "true", "yes", "on")


class OciSource(Source):
    supports_ranges = True

    def __init__(self, uri: str, env: Mapping[str, str]):
        super().__init__(uri)
        from oci.reference import parse

        self.env = dict(env)
        self.ref = parse(uri)
        self.insecure = self.env.get("KSERVE_OCI_INSECURE_REGISTRY", "").strip().lower() in _TRUE
        self._client = None
        self._lock = threading.Lock()

    def client(self):
        with self._lock:
            if self._client is None:
                from oci.registry import RegistryClient

                self._client = RegistryClient(self.ref.api_host, insecure=self.insecure, env=self.env)
            return self._client

    def list(self) -> Listing:
        from oci import mediatypes as mt

        manifest, digest = self.client().resolve(self.ref.repository, self.ref.reference)
        modelpack = (manifest.get("artifactType") == mt.MODEL_ARTIFACT
                     or manifest.get("config", {}).get("mediaType") == mt.MODEL_CONFIG)
        files = []
        for n, layer in enumerate(manifest.get("layers", [])):
            layer_digest = layer["digest"]
            hexpart = layer_digest.partition(":")[2]
            kind = mt.unpack_kind(layer["mediaType"])
            filepath = (layer.get("annotations") or {}).get(mt.ANN_FILEPATH)
            if kind is None and modelpack and filepath:
                # A ".raw" ModelPack layer is the file itself, stored under its annotated path.
                path = safe_relpath(filepath, self.uri)
                files.append(RemoteFile(path=path, key=layer_digest, size=layer.get("size"),
                                        checksums={"sha256": hexpart}))
                continue
            if kind is None:
                continue  # not a filesystem layer (signatures, SBOMs): nothing for DEST
            files.append(RemoteFile(
                path=f".layers/{n:04d}-{hexpart[:16]}",
                key=layer_digest,
                size=layer.get("size"),
                checksums={"sha256": hexpart},
                unpack=kind,
                unpack_prefix="" if modelpack else "models/",
            ))
        return Listing(files=files, revision=digest)

    def read(self, file: RemoteFile, start: int = 0, end: int | None = None,
             meta: dict | None = None) -> Iterator[bytes]:
        yield from self.client().read_blob(self.ref.repository, file.key, start, end)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def secrets(self) -> list[str]:
        """Values the engine scrubs from any message: the registry password, if we hold one."""
        client = self._client
        creds = client.credentials if client is not None else None
        return [creds.password] if creds is not None and len(creds.password) >= 4 else []

    def describe(self) -> str:
        return f"oci://{self.ref}"
