"""Start a real server process for a test, wait until it listens, and always stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s:\n{tail}")


class ManagedProcess:
    """A child process in its own process group, with its output in a log file.

    ``stop()`` kills the whole group, so servers that fork helpers leave nothing behind.
    """

    def __init__(self, argv: list[str], log: Path, env: dict | None = None, cwd: str | None = None):
        self.argv = argv
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(
            argv, stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )

    def wait_port(self, port: int, timeout: float = 30.0) -> None:
        wait_for_port(port, timeout, self.proc, self.log)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout)
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
