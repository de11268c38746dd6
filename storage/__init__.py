"""modeldepot's storage engine: parallel, resumable, verified, atomic downloads.

    from storage import download, verify
    manifest = download("s3://bucket/model", "/mnt/models")
    assert verify("/mnt/models") == []
"""

from storage.engine import download
from storage.errors import (
    AccessDeniedError,
    BadURIError,
    CapacityError,
    DestinationError,
    IntegrityError,
    NotFoundError,
    StorageError,
    TransientError,
    TransientExhaustedError,
    UnsafeArchiveError,
)
from storage.manifest import FileEntry, Manifest, read_manifest, verify

__all__ = [
    "download", "verify", "read_manifest", "Manifest", "FileEntry",
    "StorageError", "BadURIError", "NotFoundError", "AccessDeniedError", "IntegrityError",
    "UnsafeArchiveError", "TransientError", "TransientExhaustedError", "CapacityError", "DestinationError",
]
