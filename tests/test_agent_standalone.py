"""Standalone mode: ``modeldepot agent --specs DIR`` with no cluster, as a real process."""

from __future__ import annotations

import signal
import time

import yaml
from k8s.fixtures import AgentProcess, wait_for
from support.faultproxy import Fault
from support.models import blob, write_tree

from cacheagent.store import key_for


def spec_file(specs, name: str, uri: str) -> None:
    (specs / f"{name}.yaml").write_text(yaml.safe_dump({
        "apiVersion": "modeldepot.io/v1alpha1", "kind": "LocalModelCache", "metadata": {"name": name},
        "spec": {"sourceModelUri": uri, "modelSize": "1Mi", "nodeGroups": ["local"]}}))


def status(specs, name: str) -> dict:
    path = specs / ".status" / f"{name}.yaml"
    return (yaml.safe_load(path.read_text()) or {}).get("status", {}) if path.exists() else {}


def start(tmp_path, specs, env=None) -> AgentProcess:
    return AgentProcess(tmp_path / "store", tmp_path / "agent.log", "--specs", str(specs), "--node", "here",
                        env=env).start()


def test_standalone_holds_every_spec_and_writes_status_files(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    src = write_tree(tmp_path / "m1", {"w.bin": blob(100_000, seed=1)})
    spec_file(specs, "m1", f"file://{src}")
    agent = start(tmp_path, specs)
    try:
        wait_for(lambda: status(specs, "m1").get("nodeStatus") == {"here": "NodeDownloaded"}, 30, "m1 downloaded")
        assert status(specs, "m1")["copies"] == {"available": 1, "total": 1, "failed": 0}
        assert (tmp_path / "store" / "models" / key_for(f"file://{src}") / "w.bin").read_bytes() == blob(100_000, seed=1)
        node = wait_for(lambda: status(specs, "_node").get("modelStatus"), 10, "node status")
        assert node == {"m1": "ModelDownloaded"}
        assert agent.get("/healthz")[0] == 200 and agent.get("/readyz")[0] == 200
        assert agent.metric("modeldepot_agent_downloaded_bytes_total") >= 100_000
        assert "modeldepot_agent_reconcile_duration_seconds_count" in agent.get("/metrics")[1]
    finally:
        agent.stop()


def test_standalone_notices_added_and_removed_spec_files(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    a = write_tree(tmp_path / "a", {"w.bin": blob(10_000, seed="a")})
    b = write_tree(tmp_path / "b", {"w.bin": blob(10_000, seed="b")})
    spec_file(specs, "a", f"file://{a}")
    agent = start(tmp_path, specs)
    try:
        wait_for(lambda: status(specs, "a").get("nodeStatus") == {"here": "NodeDownloaded"}, 30, "a")
        spec_file(specs, "b", f"file://{b}")
        wait_for(lambda: status(specs, "b").get("nodeStatus") == {"here": "NodeDownloaded"}, 30, "b after an edit")
        (specs / "a.yaml").unlink()
        wait_for(lambda: not (specs / ".status" / "a.yaml").exists(), 15, "a's status removed")
        models = wait_for(lambda: {m["key"]: m["pinnedBy"] for m in status(specs, "_node").get("models", [])
                                   if m["pinnedBy"] == []} or None, 15, "a unpinned")
        assert models == {key_for(f"file://{a}"): []}  # unpinned, still held until space is needed
        (specs / "broken.yaml").write_text("kind: [unclosed")
        time.sleep(2)
        assert agent.proc.poll() is None and status(specs, "b")["nodeStatus"] == {"here": "NodeDownloaded"}
    finally:
        agent.stop()


def test_sigterm_stops_promptly_mid_download_and_publishes_nothing(tmp_path, http_server_factory, fault_proxy):
    www = write_tree(tmp_path / "www", {"big.bin": blob(2_000_000, seed="big")})
    proxy = fault_proxy(http_server_factory(www).base_url)
    proxy.add(Fault.stall(after=100_000, seconds=120, path=r"big\.bin", method="GET", count=1))
    specs = tmp_path / "specs"
    specs.mkdir()
    uri = f"{proxy.url}/big.bin"
    spec_file(specs, "big", uri)
    agent = start(tmp_path, specs, env={"MODELDEPOT_STALL_TIMEOUT": "120"})
    try:
        wait_for(lambda: status(specs, "big").get("nodeStatus") == {"here": "NodeDownloading"}, 30, "downloading")
        took = agent.stop(signal.SIGTERM)
        assert took < 5, f"SIGTERM took {took:.1f}s"
        assert agent.proc.returncode == 0
        assert not (tmp_path / "store" / "models" / key_for(uri)).exists()
    finally:
        agent.stop(signal.SIGKILL)


def test_periodic_verification_reports_a_corrupted_model(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    src = write_tree(tmp_path / "m", {"w.bin": blob(50_000, seed="v")})
    spec_file(specs, "m", f"file://{src}")
    agent = AgentProcess(tmp_path / "store", tmp_path / "agent.log", "--specs", str(specs), "--node", "here",
                         "--verify-interval", "1").start()
    try:
        wait_for(lambda: status(specs, "m").get("nodeStatus") == {"here": "NodeDownloaded"}, 30, "downloaded")
        held = tmp_path / "store" / "models" / key_for(f"file://{src}") / "w.bin"
        held.chmod(0o644)
        with open(held, "r+b") as f:  # same size, different bytes: only a re-hash notices
            f.write(b"X" * 100)
        wait_for(lambda: agent.metric("modeldepot_agent_verification_failures_total") >= 1, 20, "a failed re-hash")
        report = wait_for(lambda: (v := status(specs, "_node").get("lastVerification", {})).get("problems") and v,
                          10, "the problem in the node status")
        assert report["full"] is True
    finally:
        agent.stop()


def test_standalone_keeps_a_cache_that_names_no_node_group_on_this_machine(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    src = write_tree(tmp_path / "m", {"w.bin": blob(20_000, seed="ng")})
    (specs / "m.yaml").write_text(yaml.safe_dump({
        "apiVersion": "modeldepot.io/v1alpha1", "kind": "LocalModelCache", "metadata": {"name": "m"},
        "spec": {"sourceModelUri": f"file://{src}", "modelSize": "1Mi"}}))
    agent = start(tmp_path, specs)
    try:
        wait_for(lambda: status(specs, "m").get("nodeStatus") == {"here": "NodeDownloaded"}, 30, "m downloaded")
        assert (tmp_path / "store" / "models" / key_for(f"file://{src}") / "w.bin").read_bytes() == blob(20_000, seed="ng")
    finally:
        agent.stop()
