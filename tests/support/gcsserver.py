"""A real GCS JSON-API server for tests: ``gcp-storage-emulator``, in memory, on 127.0.0.1.

Objects are uploaded with plain JSON-API media uploads (no client library), so what the tests
put in is exactly what a bucket would hold, MD5 and CRC32C computed by the emulator.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from urllib.parse import quote

from support.procs import ManagedProcess, free_port


class GCSEmulator:
    def __init__(self, workdir: Path):
        self.port = free_port()
        exe = Path(sys.executable).parent / "gcp-storage-emulator"
        self.proc = ManagedProcess(
            [str(exe), "start", "--host", "127.0.0.1", "--port", str(self.port), "--in-memory", "-q"],
            Path(workdir) / "gcs-emulator.log",
        )
        try:
            self.proc.wait_port(self.port, timeout=30)
        except BaseException:
            self.proc.stop()
            raise

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _request(self, method: str, path: str, data: bytes | None = None, ctype: str = "application/json"):
        req = urllib.request.Request(self.endpoint + path, data=data, method=method,
                                     headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")

    def create_bucket(self, name: str) -> None:
        self._request("POST", "/storage/v1/b?project=test", json.dumps({"name": name}).encode())

    def upload(self, bucket: str, name: str, data: bytes) -> dict:
        # A multipart upload: the emulator's media upload cannot take an empty body.
        boundary = "modeldepot-test-boundary"
        body = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
                f"{json.dumps({'name': name})}\r\n--{boundary}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self._request("POST", f"/upload/storage/v1/b/{quote(bucket)}/o?uploadType=multipart", body,
                             f"multipart/related; boundary={boundary}")

    def upload_tree(self, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            self.upload(bucket, f"{prefix.strip('/')}/{rel}" if prefix else rel, data)

    def stop(self) -> None:
        self.proc.stop()

