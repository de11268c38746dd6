"""A real Azure Blob server for tests: Azurite (npm), in memory, on 127.0.0.1, telemetry off.

Azurite is found at ``tests/.node/node_modules/.bin/azurite-blob`` (tests/run installs it from
tests/deps/npm.txt) or on PATH. It serves the well-known development account ``devstoreaccount1``
at ``http://127.0.0.1:PORT/devstoreaccount1``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from support.procs import ManagedProcess, free_port

ACCOUNT = "devstoreaccount1"
# Azurite's published development key (the same in every Azurite install; not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_binary() -> str | None:
    here = Path(__file__).resolve().parents[1] / ".node" / "node_modules" / ".bin" / "azurite-blob"
    return str(here) if here.exists() else shutil.which("azurite-blob")


class Azurite:
    def __init__(self, workdir: Path):
        exe = azurite_binary()
        if exe is None:
            raise RuntimeError("azurite-blob not found: cd tests/.node && npm install azurite")
        self.port = free_port()
        workdir = Path(workdir)
        # --disableTelemetry is mandatory: without it Azurite reports usage over the network.
        self.proc = ManagedProcess(
            [exe, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--inMemoryPersistence",
             "--disableTelemetry", "--skipApiVersionCheck", "--silent"],
            workdir / "azurite.log",
        )
        try:
            self.proc.wait_port(self.port, timeout=60)
        except BaseException:
            self.proc.stop()
            raise

    @property
    def endpoint(self) -> str:
        """The account's blob endpoint, path-style as emulators use."""
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={self.endpoint};")

    def client(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def upload_tree(self, container: str, prefix: str, files: dict[str, bytes], *, md5: bool = True) -> None:
        from azure.storage.blob import ContentSettings

        cc = self.client().get_container_client(container)
        for rel, data in files.items():
            name = f"{prefix.strip('/')}/{rel}" if prefix else rel
            settings = None
            if md5:
                import hashlib

                settings = ContentSettings(content_md5=bytearray(hashlib.md5(data).digest()))
            cc.upload_blob(name, data, overwrite=True, content_settings=settings)

    def stop(self) -> None:
        self.proc.stop()
