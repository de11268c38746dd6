"""Image references: ``[registry[:port]/]repository[:tag][@sha256:hex]``.

Parsing follows the Docker conventions users already type: a first component with a dot, a colon
or named ``localhost`` is a registry, anything else is a Docker Hub repository (``library/`` added
for single names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage.errors import BadURIError

DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """Host (and port) the distribution API lives on."""
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse(ref: str) -> Reference:
    """Parse ``ref``; raise BadURIError naming it when it is not a valid image reference."""
    text = ref.strip()
    if text.startswith("oci://"):
        text = text[len("oci://") :]
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not DIGEST.match(digest):
            raise BadURIError(f"{ref}: the digest must look like sha256:<64 hex>; fix the reference")
    registry = DOCKER_HUB
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, text = first, rest
    tag = None
    name, colon, maybe_tag = text.rpartition(":")
    if colon and "/" not in maybe_tag:
        text, tag = name, maybe_tag
        if not _TAG.match(tag):
            raise BadURIError(f"{ref}: {tag!r} is not a valid tag; use letters, digits, '_', '.', '-'")
    if registry == DOCKER_HUB and "/" not in text:
        text = f"library/{text}"
    if not text or not _REPO.match(text):
        raise BadURIError(f"{ref}: {text!r} is not a valid repository name (lowercase, digits, '._-/')")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository=text, tag=tag, digest=digest)
