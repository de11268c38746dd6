"""URI → Source. One module per scheme, imported only when a URI of its scheme is used."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping

from storage.errors import BadURIError
from storage.sources.base import Listing, RemoteFile, Source, redact_uri

__all__ = ["Listing", "RemoteFile", "Source", "open_source", "redact_uri"]

# Azure Blob URLs are https URLs too, so they are matched before the generic http source.
_AZURE_HOST = re.compile(r"^https://[a-z0-9]+\.(blob\.core\.windows\.net|z\d+\.blob\.storage\.azure\.net)(/|$)", re.I)

_BY_SCHEME = {
    "s3": "storage.sources.s3:S3Source",
    "gs": "storage.sources.gcs:GCSSource",
    "az": "storage.sources.azure:AzureSource",
    "hf": "storage.sources.hf:HFSource",
    "oci": "storage.sources.oci:OciSource",
    "http": "storage.sources.http:HTTPSource",
    "https": "storage.sources.http:HTTPSource",
    "file": "storage.sources.local:LocalSource",
    "pvc": "storage.sources.local:LocalSource",
}


def source_class(uri: str) -> type[Source]:
    if _AZURE_HOST.match(uri):
        target = "storage.sources.azure:AzureSource"
    elif uri.startswith("/") or uri.startswith("./") or uri.startswith("../") or "://" not in uri:
        if not uri or ":" in uri.split("/", 1)[0]:
            raise BadURIError(f"{redact_uri(uri)!r} is not a URI modeldepot understands; use s3://, gs://, "
                              "hf://, oci://, https://, pvc://, file:// or a local path")
        target = "storage.sources.local:LocalSource"
    else:
        scheme = uri.split("://", 1)[0].lower()
        target = _BY_SCHEME.get(scheme)
        if target is None:
            raise BadURIError(f"{redact_uri(uri)}: scheme {scheme!r} is not supported; use s3://, gs://, "
                              "hf://, oci://, https://, pvc://, file:// or a local path")
    module, name = target.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise BadURIError(f"{redact_uri(uri)}: this build of modeldepot has no {module.rsplit('.', 1)[1]} source yet") from None
        raise


def open_source(uri: str, env: Mapping[str, str] | None = None) -> Source:
    """The Source for ``uri``; raises BadURIError for a malformed URI or unknown scheme."""
    return source_class(uri)(uri, env)
