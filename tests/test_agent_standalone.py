"""Standalone mode: ``modeldepot agent --specs DIR`` with no cluster, as a real process."""

from __future__ import annotations

import signal
import time

import pytest
import xxhash
import yaml
from conftest import run_cli
from k8s.fixtures import AgentProcess, wait_for
from support.faultproxy import Fault
from support.hfserver import HubServer
from support.models import blob, read_tree, write_tree

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


def test_periodic_verification_reports_a_corrupted_model_and_repairs_it(tmp_path):
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
        wait_for(lambda: held.exists() and held.read_bytes() == blob(50_000, seed="v"), 20, "the model repaired")
        # The pass after the repair is a full one again and finds nothing.
        report = wait_for(lambda: (v := status(specs, "_node").get("lastVerification", {})).get("problems") == 0
                          and v["time"] and v, 10, "a clean pass in the node status")
        assert report["full"] is True
        assert agent.metric("modeldepot_agent_verification_failures_total") == 1
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


# -- repair: verification finds a damaged model, the agent re-fetches only what is damaged --------
@pytest.fixture
def hub():
    server = HubServer(lfs_threshold=1 << 30)  # every file served by /resolve/, none via the LFS CDN
    try:
        yield server
    finally:
        server.stop()


def flip_byte(path, offset: int = 1234) -> None:
    path.chmod(0o644)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))
    path.chmod(0o444)


def content_gets(proxy) -> dict[str, int]:
    """File name -> body bytes the proxy sent for GETs of file content (listings excluded)."""
    out: dict[str, int] = {}
    for r in proxy.requests:
        if r.method == "GET" and "/resolve/" in r.path:
            name = r.path.rsplit("/", 1)[1]
            out[name] = out.get(name, 0) + r.bytes_sent
    return out


def start_with_hub(tmp_path, specs, proxy) -> AgentProcess:
    return AgentProcess(tmp_path / "store", tmp_path / "agent.log", "--specs", str(specs), "--node", "here",
                        "--verify-interval", "1",
                        env={"HF_ENDPOINT": proxy.url, "MODELDEPOT_STALL_TIMEOUT": "30"}).start()


def test_a_corrupted_blob_is_repaired_by_refetching_only_that_file(tmp_path, hub, fault_proxy):
    files = {"config.json": b'{"files": 2}' * 1000, "weights.dat": blob(400_000, seed="repair")}
    hub.commit("org/two", files)
    proxy = fault_proxy(hub.url)
    specs = tmp_path / "specs"
    specs.mkdir()
    uri = "hf://org/two"
    spec_file(specs, "two", uri)
    agent = start_with_hub(tmp_path, specs, proxy)
    store, key = tmp_path / "store", key_for(uri)
    try:
        wait_for(lambda: status(specs, "two").get("nodeStatus") == {"here": "NodeDownloaded"}, 30, "downloaded")
        assert content_gets(proxy) == {"config.json": 12_000, "weights.dat": 400_000}
        proxy.clear_log()
        # Hold the re-fetch open for a moment, so the status is seen going back through downloading.
        proxy.add(Fault.stall(after=1000, seconds=2, path=r"weights\.dat$", method="GET"))
        flip_byte(store / "blobs" / "xxh3" / xxhash.xxh3_128(files["weights.dat"]).hexdigest())

        wait_for(lambda: status(specs, "two").get("nodeStatus") == {"here": "NodeDownloading"}, 20,
                 f"the re-fetch (log: {agent.tail()})")
        wait_for(lambda: status(specs, "two").get("nodeStatus") == {"here": "NodeDownloaded"}, 20, "downloaded again")
        assert read_tree(store / "models" / key) == files
        assert content_gets(proxy) == {"weights.dat": 400_000}, "only the corrupt file was fetched again"
        check = run_cli("modeldepot", "cache", "verify", "--root", str(store))
        assert check.returncode == 0 and check.stdout.strip() == "OK", check.stdout
        node = wait_for(lambda: (n := status(specs, "_node")).get("modelStatus") == {"two": "ModelDownloaded"}
                        and n, 10, "node status")
        assert [(m["key"], m["state"]) for m in node["models"]] == [(key, "ready")]
        assert agent.metric("modeldepot_agent_repairs_total", '{problem="corrupt"}') == 1
        line = next(x for x in agent.tail(100_000).splitlines() if f"model {key}:" in x)
        assert "weights.dat: content does not match its xxh3" in line and "re-fetching 1 file" in line
        assert "cache two" in line
    finally:
        agent.stop()


def test_a_file_deleted_from_a_published_model_is_fetched_again_on_the_next_pass(tmp_path, hub, fault_proxy):
    files = {"config.json": b"{}", "weights.dat": blob(200_000, seed="deleted")}
    hub.commit("org/gone", files)
    proxy = fault_proxy(hub.url)
    specs = tmp_path / "specs"
    specs.mkdir()
    uri = "hf://org/gone"
    spec_file(specs, "gone", uri)
    agent = start_with_hub(tmp_path, specs, proxy)
    store, key = tmp_path / "store", key_for(uri)
    try:
        wait_for(lambda: status(specs, "gone").get("nodeStatus") == {"here": "NodeDownloaded"}, 30, "downloaded")
        proxy.clear_log()
        (store / "models" / key / "config.json").unlink()
        wait_for(lambda: agent.metric("modeldepot_agent_repairs_total", '{problem="missing"}') == 1, 20,
                 f"a repair (log: {agent.tail()})")
        wait_for(lambda: (store / "models" / key / "config.json").exists(), 20, "the file back")
        assert read_tree(store / "models" / key) == files
        assert content_gets(proxy) == {"config.json": 2}
        wait_for(lambda: status(specs, "gone").get("nodeStatus") == {"here": "NodeDownloaded"}, 10, "downloaded")
        assert run_cli("modeldepot", "cache", "verify", "--root", str(store)).returncode == 0
    finally:
        agent.stop()


class _Recorder:
    """An in-process Source and Reporter that wants nothing and records Events."""

    def __init__(self):
        self.events: list[tuple[str, str, str]] = []

    def start(self): pass
    def ready(self): return True
    def desired(self): return {}, {}
    def storage_limit(self): return None
    def flush(self, states, report): pass
    def failure(self, spec, reason, message): pass

    def event(self, name, reason, message):
        self.events.append((name, reason, message))


def test_the_agent_repairs_a_model_in_use_once_it_is_free(tmp_path):
    from cacheagent.agent import Agent
    from cacheagent.locks import FileLock
    from cacheagent.reconcile import DOWNLOADED, CacheState
    from cacheagent.store import Store

    data = blob(50_000, seed="busy")
    uri = f"file://{write_tree(tmp_path / 'm', {'w.bin': data, 'c.json': b'{}'})}"
    store = Store(tmp_path / "store")
    key = store.ensure(uri).key
    io = _Recorder()
    agent = Agent(store, io, io, verify_interval=3600, repair_retry=0.05)
    agent.reconciler.states = {"m": CacheState(DOWNLOADED, "", key, uri)}
    flip_byte(store.layout.blobs / xxhash.xxh3_128(data).hexdigest())
    sample = agent.metrics.registry.get_sample_value
    try:
        with FileLock(store.layout.key_lock(key), shared=True):  # a pod's initializer linking it
            pending = agent.verify_once(full=True)
        assert [(p.key, p.path) for p in pending] == [(key, "w.bin")] and io.events == []
        assert store.record(key).state == "ready" and sample("modeldepot_agent_repairs_deferred_total") == 1
        agent.wake.clear()
        assert agent.repair(pending) == []
        assert store.record(key).state == "partial" and agent.wake.is_set(), "reconcile woken to re-fetch"
        ((name, reason, message),) = io.events
        assert (name, reason) == ("m", "VerificationFailed")
        assert message.startswith(f"model {key}: w.bin: content does not match its xxh3")
        assert message.endswith("unpublished it, re-fetching 1 file")
        assert sample("modeldepot_agent_repairs_total", {"problem": "corrupt"}) == 1
    finally:
        agent.reconciler.shutdown()
