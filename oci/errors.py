"""Typed errors of modelcar.

They subclass the storage engine's types so that one ``except StorageError`` at a CLI edge catches
both, and so the ``oci://`` source can raise them unchanged: a registry 404 *is* a NotFoundError.
Messages are one line, name the reference, say what to do, and never carry a credential.
"""

from __future__ import annotations

from storage.errors import AccessDeniedError, IntegrityError, NotFoundError, StorageError, TransientError


class RegistryError(StorageError):
    """The registry answered something we cannot use (bad status, malformed manifest)."""


class RegistryAuthError(RegistryError, AccessDeniedError):
    """The registry refused our credentials, or demanded some we do not have (401/403)."""


class RegistryNotFoundError(RegistryError, NotFoundError):
    """The repository, tag, manifest or blob does not exist."""


class RegistryTransientError(RegistryError, TransientError):
    """5xx, 429, reset, timeout: worth retrying."""


class DigestMismatchError(RegistryError, IntegrityError):
    """Bytes received do not hash to the digest that names them."""


class BuildError(StorageError):
    """The model directory, base image or options cannot make an image."""


class LayoutError(StorageError):
    """An OCI image layout on disk is missing, malformed, or lacks the requested tag."""
