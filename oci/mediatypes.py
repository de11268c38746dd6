"""Media types and annotation keys, spelled once.

OCI names follow opencontainers/image-spec (``media-types.md``, ``annotations.md``); ModelPack
names follow modelpack/model-spec ``specs-go/v1/mediatype.go`` and ``annotations.go``.
"""

from __future__ import annotations

OCI_LAYOUT_VERSION = "1.0.0"

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"

MANIFEST_TYPES = (MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (INDEX, DOCKER_MANIFEST_LIST)
ACCEPT_ALL = ", ".join((MANIFEST, INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST))

# CNCF ModelPack (model-spec v1).
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODEL_WEIGHT = "application/vnd.cncf.model.weight.v1.tar"
MODEL_WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.tar"
MODEL_DOC = "application/vnd.cncf.model.doc.v1.tar"

ANN_TITLE = "org.opencontainers.image.title"
ANN_SOURCE = "org.opencontainers.image.source"
ANN_REVISION = "org.opencontainers.image.revision"
ANN_CREATED = "org.opencontainers.image.created"
ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_FILEPATH = "org.cncf.model.filepath"

COMPRESSIONS = ("none", "gzip", "zstd")
_SUFFIX = {"none": "", "gzip": "+gzip", "zstd": "+zstd"}


def with_compression(base: str, compression: str) -> str:
    """``base`` (a ``...tar`` type) with the suffix the compression adds."""
    return base + _SUFFIX[compression]


def unpack_kind(media_type: str) -> str | None:
    """How a layer of this media type is unpacked: "tar", "tar+gzip", "tar+zstd", or None."""
    if media_type in (DOCKER_LAYER_GZIP, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"):
        return "tar+gzip"
    if media_type == DOCKER_LAYER:
        return "tar"
    if media_type.endswith(".tar+gzip"):
        return "tar+gzip"
    if media_type.endswith(".tar+zstd"):
        return "tar+zstd"
    if media_type.endswith(".tar"):
        return "tar"
    return None


def to_oci_layer(media_type: str) -> str:
    """The OCI name for a Docker layer type (same bytes), so a Docker base fits an OCI manifest."""
    return {DOCKER_LAYER_GZIP: LAYER_GZIP, DOCKER_LAYER: LAYER}.get(media_type, media_type)
