"""A real Kubernetes API server (etcd + kube-apiserver v1.20, from tests/k8s/build.sh) for tests.

``LocalCluster`` starts both on free 127.0.0.1 ports via tests/k8s/start.sh, can stop and restart
the apiserver alone (etcd keeps the data, the token stays valid), can compact etcd's history so a
watch from an old resourceVersion gets 410 Gone, and always stops what it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
BINARY = HERE / ".bin" / "kube-apiserver"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_run(n: int) -> int:
    """A base port such that base..base+n-1 are all free on 127.0.0.1 (etcd wants three in a row)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65000 and all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no run of free ports")


def _kill(pid: int | None, sig: int = signal.SIGTERM) -> None:
    if not pid:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child (start.sh's children are re-parented, so usually not)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class LocalCluster:
    def __init__(self, rundir: Path, binary: Path = BINARY):
        self.rundir = Path(rundir)
        self.binary = Path(binary)
        self.etcd_port = free_port_run(3)
        self.api_port = free_port_run(1)
        self.etcd_pid: int | None = None
        self.api_pid: int | None = None
        self.kubeconfig = self.rundir / "kubeconfig.yaml"

    def _start(self, with_etcd: bool) -> None:
        env = {**os.environ, "START_ETCD": "1" if with_etcd else "0"}
        out = subprocess.run(
            ["bash", str(HERE / "start.sh"), str(self.binary), str(self.rundir), str(self.etcd_port), str(self.api_port)],
            env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            log = (self.rundir / "apiserver.log")
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"start.sh failed: {out.stderr.strip()}\n{tail}")
        etcd_pid, api_pid = out.stdout.split()
        if with_etcd:
            self.etcd_pid = int(etcd_pid)
        self.api_pid = int(api_pid)

    def start(self) -> LocalCluster:
        self._start(with_etcd=True)
        return self

    def stop_apiserver(self) -> None:
        # Like a crash (and fast: a graceful apiserver shutdown waits seconds); etcd keeps the data.
        _kill(self.api_pid, signal.SIGKILL)
        self.api_pid = None

    def start_apiserver(self) -> None:
        self._start(with_etcd=False)

    def stop(self) -> None:
        self.stop_apiserver()
        _kill(self.etcd_pid)
        self.etcd_pid = None

    # -- etcd, through its v3 JSON gateway (no etcdctl needed) ------------------------------
    def _etcd(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.etcd_port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def etcd_revision(self) -> int:
        return int(self._etcd("/v3/kv/range", {"key": "AA=="})["header"]["revision"])

    def compact(self) -> int:
        """Compact etcd's history up to now: any watch from an older resourceVersion gets 410."""
        rev = self.etcd_revision()
        self._etcd("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def api_client(self):
        import urllib3
        from kubernetes import config

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # a throwaway self-signed server
        return config.new_client_from_config(config_file=str(self.kubeconfig))
