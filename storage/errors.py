"""Typed errors of the storage engine.

Every error a caller can see is a :class:`StorageError`. Its message is one line that names the
URI (never a credential) and says what to do next; the CLI prints exactly that line. Sources map
their native exceptions onto these types; the engine retries only :class:`TransientError`.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class: a download, verification or publish that did not succeed."""

    exit_code = 1

    def __init__(self, message: str):
        # One line, always: a multi-line message breaks init-container logs and our CLI contract.
        super().__init__(" ".join(str(message).split()))


class BadURIError(StorageError):
    """The URI is malformed or names a scheme we do not handle."""


class NotFoundError(StorageError):
    """The bucket, object, prefix, repository or revision does not exist."""


class AccessDeniedError(StorageError):
    """The source refused our credentials (401/403)."""


class IntegrityError(StorageError):
    """Bytes received do not match the size or checksum the source promised, or a manifest."""


class UnsafeArchiveError(StorageError):
    """An archive or image layer tried to write outside DEST or create a device file."""


class TransientError(StorageError):
    """A failure worth retrying: 5xx, 429, connection reset, timeout, truncated body."""


class TransientExhaustedError(StorageError):
    """A transient failure that persisted through every retry."""


class CapacityError(StorageError):
    """The node store cannot hold what it is asked to keep."""


class DestinationError(StorageError):
    """DEST cannot be written or published (permissions, not a directory, another writer)."""


PERMANENT = (BadURIError, NotFoundError, AccessDeniedError, UnsafeArchiveError, DestinationError)
