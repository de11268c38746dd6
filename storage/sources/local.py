"""Local paths, ``file://`` URIs and KServe's ``pvc://NAME/PATH`` (a mounted volume).

The engine hard-links these into DEST when both are on one filesystem (no bytes copied) and
copies otherwise; ``local_path`` is what lets it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from storage.errors import AccessDeniedError, BadURIError, NotFoundError
from storage.sources.base import CHUNK, Listing, RemoteFile, Source, safe_relpath

SKIP_DIRS = {".modeldepot"}  # a previous modeldepot DEST used as a source: skip its bookkeeping


class LocalSource(Source):
    def __init__(self, uri, env=None):
        super().__init__(uri, env)
        self.root = self._resolve(uri)

    def _resolve(self, uri: str) -> Path:
        if uri.startswith("file://"):
            parts = urlsplit(uri)
            if parts.netloc not in ("", "localhost"):
                raise BadURIError(f"{uri}: file:// URIs name a local path (file:///abs/path), not host {parts.netloc!r}")
            return Path(unquote(parts.path))
        if uri.startswith("pvc://"):
            rest = uri[len("pvc://"):]
            name, _, sub = rest.partition("/")
            if not name:
                raise BadURIError(f"{uri}: expected pvc://CLAIM_NAME/PATH")
            return Path(self.settings.pvc_root) / name / sub
        return Path(uri).absolute()

    def list(self) -> Listing:
        root = self.root
        try:
            st = root.stat()
        except FileNotFoundError:
            raise NotFoundError(f"{self.describe()}: no such file or directory ({root})") from None
        except PermissionError:
            raise AccessDeniedError(f"{self.describe()}: permission denied reading {root}") from None
        if not root.is_dir():
            return Listing([self._entry(root, root.name, st)])
        files = []
        for dirpath, dirnames, filenames in os.walk(root, onerror=self._walk_error):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not (here == root and d in SKIP_DIRS))
            for name in sorted(filenames):
                path = here / name
                try:
                    fst = path.stat()
                except FileNotFoundError:
                    continue  # a dangling symlink: nothing to copy
                if path.is_file():
                    files.append(self._entry(path, path.relative_to(root).as_posix(), fst))
        return Listing(files)

    def _walk_error(self, exc: OSError) -> None:
        raise AccessDeniedError(f"{self.describe()}: cannot read {exc.filename}: {exc.strerror}")

    def _entry(self, path: Path, rel: str, st: os.stat_result) -> RemoteFile:
        return RemoteFile(path=safe_relpath(rel, self.uri), key=str(path), size=st.st_size,
                          version=f"{st.st_ino}-{st.st_mtime_ns}")

    def local_path(self, file: RemoteFile) -> str:
        # link(2) does not follow symlinks: link the file a symlink (an HF cache snapshot) points to.
        return os.path.realpath(file.key)

    def read(self, file: RemoteFile, start: int = 0, end: int | None = None,
             meta: dict | None = None) -> Iterator[bytes]:
        try:
            fh = open(file.key, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"{self.describe()}: {file.path} disappeared during the download") from None
        with fh:
            fh.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                chunk = fh.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
