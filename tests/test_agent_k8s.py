"""The node agent against a real kube-apiserver (v1.20 built from Debian's source, tests/k8s/).

Agents run as real processes (``modeldepot agent --kubeconfig ... --node ...``) with their own
store directories; Node objects are created by the tests (no kubelet runs). Models come from local
directories or the HTTP file server, through the fault proxy where a download must be held open.
"""

from __future__ import annotations

import base64
import json
import signal
import time

import pytest
from conftest import requested_bytes
from k8s.fixtures import unique, wait_for
from support.faultproxy import Fault
from support.models import blob, write_tree

from cacheagent.store import key_for

DOWNLOADED, DOWNLOADING, ERROR = "NodeDownloaded", "NodeDownloading", "NodeDownloadError"


def model_dir(tmp_path, name: str, size: int = 200_000) -> str:
    root = write_tree(tmp_path / "models" / name, {"config.json": b'{"m": "%s"}' % name.encode(),
                                                   "weights.bin": blob(size, seed=name)})
    return f"file://{root}"


def store_keys(root) -> set[str]:
    models = root / "models"
    return {p.name for p in models.iterdir()} if models.exists() else set()


def events_for(kube, name: str) -> list:
    return [e for e in kube.core.list_namespaced_event("default").items if e.involved_object.name == name]


def test_two_agents_hold_what_their_groups_select_and_count_copies(tmp_path, kube, agents):
    na, nb = unique("node-a"), unique("node-b")
    pool = unique("pool")
    kube.node(na, {"pool": pool, "zone": "a"})
    kube.node(nb, {"pool": pool, "zone": "b"})
    ga, gb = unique("ga"), unique("gb")
    kube.group(ga, {"storageLimit": "1Gi", "nodeSelector": {"pool": pool, "zone": "a"}})
    kube.group(gb, {"storageLimit": "1Gi", "nodeAffinity": {"required": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]},
                              {"key": "pool", "operator": "In", "values": [pool]}]}]}}})
    only_a, only_b, both = unique("only-a"), unique("only-b"), unique("both")
    uris = {only_a: model_dir(tmp_path, "ma"), only_b: model_dir(tmp_path, "mb"), both: model_dir(tmp_path, "mab")}
    kube.cache(only_a, uris[only_a], [ga])
    kube.cache(only_b, uris[only_b], [gb])
    kube.cache(both, uris[both], [ga, gb])
    agent_a, agent_b = agents(na), agents(nb)

    kube.wait_node_state(only_a, na, DOWNLOADED)
    kube.wait_node_state(only_b, nb, DOWNLOADED)
    status = wait_for(lambda: (s := kube.status(both)).get("copies", {}).get("available") == 2 and s,
                      40, "both copies")
    assert status["nodeStatus"] == {na: DOWNLOADED, nb: DOWNLOADED}
    assert status["copies"] == {"available": 2, "total": 2, "failed": 0}
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Ready": "True", "DownloadFailed": "False"}
    assert kube.status(only_a)["nodeStatus"] == {na: DOWNLOADED}
    assert kube.status(only_b)["nodeStatus"] == {nb: DOWNLOADED}
    assert store_keys(agent_a_root := tmp_path / f"store-{na}") == {key_for(uris[only_a]), key_for(uris[both])}
    assert store_keys(tmp_path / f"store-{nb}") == {key_for(uris[only_b]), key_for(uris[both])}
    assert (agent_a_root / "models" / key_for(uris[only_a]) / "weights.bin").read_bytes() == blob(200_000, seed="ma")

    node_a = wait_for(lambda: (s := kube.node_status(na)).get("modelStatus", {}).get(both) == "ModelDownloaded" and s,
                      20, "LocalModelNode status")
    assert node_a["modelStatus"] == {only_a: "ModelDownloaded", both: "ModelDownloaded"}
    assert node_a["capacity"] == 1024**3 and node_a["used"] > 400_000
    assert node_a["available"] == node_a["capacity"] - node_a["used"]
    assert node_a["lastVerification"]["problems"] == 0
    assert {m["key"]: m["pinnedBy"] for m in node_a["models"]} == {key_for(uris[only_a]): [only_a],
                                                                    key_for(uris[both]): [both]}
    assert agent_a.metric("modeldepot_agent_models", '{state="NodeDownloaded"}') == 2
    assert agent_a.metric("modeldepot_agent_downloaded_bytes_total") >= 400_000
    assert agent_b.metric("modeldepot_agent_store_capacity_bytes") == 1024**3


def test_deleted_cache_is_unpinned_and_evicted_only_under_pressure(tmp_path, kube, agents):
    node, group = unique("node"), unique("g")
    kube.node(node, {"evict": group})
    kube.group(group, {"storageLimit": "3000000", "nodeSelector": {"evict": group}})
    first, second = unique("first"), unique("second")
    uri1, uri2 = model_dir(tmp_path, "big1", 1_800_000), model_dir(tmp_path, "big2", 1_800_000)
    kube.cache(first, uri1, [group], size="2M")
    too_big = unique("too-big")
    kube.cache(too_big, model_dir(tmp_path, "never"), [group], size="1Gi")
    agent = agents(node)
    kube.wait_node_state(first, node, DOWNLOADED)
    assert "exceeds" in kube.wait_node_state(too_big, node, ERROR)["nodeErrors"][node]

    kube.delete_cache(first)
    unpinned = wait_for(lambda: [m for m in kube.node_status(node).get("models", [])
                                 if m["key"] == key_for(uri1) and m["pinnedBy"] == []], 20, "unpinned model")
    assert unpinned[0]["state"] == "ready"  # unpinned is not evicted: there is no pressure yet
    assert key_for(uri1) in store_keys(tmp_path / f"store-{node}")

    kube.cache(second, uri2, [group], size="2M")  # two of these do not fit in 3 MB: the unpinned one goes
    kube.wait_node_state(second, node, DOWNLOADED)
    wait_for(lambda: store_keys(tmp_path / f"store-{node}") == {key_for(uri2)}, 20, "eviction of the first model")
    assert agent.metric("modeldepot_agent_store_used_bytes") <= 3_000_000


def test_failed_download_is_reported_with_an_event_and_retried(tmp_path, kube, agents):
    node, group, name = unique("node"), unique("g"), unique("missing")
    kube.node(node, {"g": group})
    kube.group(group, {"storageLimit": "1Gi", "nodeSelector": {"g": group}})
    later = tmp_path / "later"
    kube.cache(name, f"file://{later}", [group])
    agents(node)

    status = kube.wait_node_state(name, node, ERROR)
    assert status["copies"] == {"available": 0, "total": 1, "failed": 1}
    assert str(later) in status["nodeErrors"][node]
    failed = {c["type"]: c for c in status["conditions"]}["DownloadFailed"]
    assert failed["status"] == "True" and failed["reason"] == "NodeDownloadError" and node in failed["message"]
    event = wait_for(lambda: events_for(kube, name), 10, "a Warning event")[0]
    assert event.type == "Warning" and node in event.message

    write_tree(later, {"w.bin": blob(1000, seed=1)})  # the source appears: the agent retries by itself
    status = kube.wait_node_state(name, node, DOWNLOADED)
    assert status["copies"] == {"available": 1, "total": 1, "failed": 0}
    assert status["nodeErrors"] == {}


def test_a_corrupted_model_is_repaired_and_a_warning_event_says_so(tmp_path, kube, agents):
    node, group, name = unique("node"), unique("g"), unique("repair")
    kube.node(node, {"g": group})
    kube.group(group, {"storageLimit": "1Gi", "nodeSelector": {"g": group}})
    uri = model_dir(tmp_path, "repair")
    kube.cache(name, uri, [group])
    agent = agents(node, "--verify-interval", "1")
    kube.wait_node_state(name, node, DOWNLOADED)
    weights = tmp_path / f"store-{node}" / "models" / key_for(uri) / "weights.bin"
    weights.chmod(0o644)  # the model's file is its blob: same inode
    with open(weights, "r+b") as f:
        f.write(b"X" * 100)

    event = wait_for(lambda: [e for e in events_for(kube, name) if e.reason == "VerificationFailed"], 20,
                     f"a VerificationFailed event (log: {agent.tail()})")[0]
    assert event.type == "Warning" and event.message.startswith(f"node {node}: model {key_for(uri)}: ")
    assert "weights.bin: content does not match its xxh3" in event.message and "re-fetching 1 file" in event.message
    wait_for(lambda: weights.exists() and weights.read_bytes() == blob(200_000, seed="repair"), 20, "the model repaired")
    assert kube.wait_node_state(name, node, DOWNLOADED)["copies"] == {"available": 1, "total": 1, "failed": 0}
    wait_for(lambda: kube.node_status(node).get("modelStatus", {}).get(name) == "ModelDownloaded", 10, "node status")
    assert agent.metric("modeldepot_agent_repairs_total", '{problem="corrupt"}') == 1


def test_credentials_come_from_the_named_secret_and_never_reach_status(tmp_path, kube, agents, http_server_factory):
    token = "Bearer s3cr3t-" + unique("tok")
    www = tmp_path / "www"
    write_tree(www, {"m.bin": blob(50_000, seed="cred")})
    server = http_server_factory(www, {"Authorization": token})
    ns = unique("creds")
    kube.core.create_namespace({"metadata": {"name": ns}})
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": "web"}, "data": {
        "127.0.0.1-headers": base64.b64encode(json.dumps({"Authorization": token}).encode()).decode()}})
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": "wrong"}, "data": {
        "127.0.0.1-headers": base64.b64encode(json.dumps({"Authorization": token + "x"}).encode()).decode()}})
    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": "reader"}, "secrets": [{"name": "web"}]})
    node, group = unique("node"), unique("g")
    kube.node(node, {"g": group})
    kube.group(group, {"storageLimit": "1Gi", "nodeSelector": {"g": group}})
    good, via_sa, bad = unique("good"), unique("via-sa"), unique("bad")
    kube.cache(good, server.url("m.bin"), [group], credentials={"namespace": ns, "secretName": "web"})
    kube.cache(via_sa, server.url("m.bin") + "?v=1", [group],
               credentials={"namespace": ns, "serviceAccountName": "reader"})
    kube.cache(bad, server.url("m.bin") + "?v=2", [group], credentials={"namespace": ns, "secretName": "wrong"})
    agent = agents(node)

    kube.wait_node_state(good, node, DOWNLOADED)
    kube.wait_node_state(via_sa, node, DOWNLOADED)
    status = kube.wait_node_state(bad, node, ERROR)
    assert "403" in status["nodeErrors"][node] or "denied" in status["nodeErrors"][node]
    everything = json.dumps([kube.get_cache(good), kube.get_cache(bad), kube.node_status(node),
                             [e.message for e in events_for(kube, bad)]])
    assert "s3cr3t" not in everything
    assert "s3cr3t" not in agent.tail(100_000)


def test_watch_recovers_after_apiserver_restart_and_relists_on_410_gone(tmp_path, cluster, kube, agents):
    node, group = unique("node"), unique("g")
    kube.node(node, {"g": group})
    kube.group(group, {"storageLimit": "1Gi", "nodeSelector": {"g": group}})
    before, after = unique("before"), unique("after")
    kube.cache(before, model_dir(tmp_path, "before"), [group])
    agent = agents(node)
    kube.wait_node_state(before, node, DOWNLOADED)

    # Freeze the agent, break its watch by restarting the apiserver, change things behind its back,
    # and compact etcd so the resourceVersion it resumes from no longer exists (410 Gone).
    agent.send(signal.SIGSTOP)
    try:
        cluster.stop_apiserver()
        cluster.start_apiserver()
        kube.delete_cache(before)
        kube.cache(after, model_dir(tmp_path, "after"), [group])
        cluster.compact()
    finally:
        agent.send(signal.SIGCONT)

    kube.wait_node_state(after, node, DOWNLOADED)
    wait_for(lambda: agent.metric("modeldepot_agent_watch_relists_total") >= 1, 20, "a re-list after 410")
    wait_for(lambda: [m for m in kube.node_status(node).get("models", []) if m["pinnedBy"] == []], 20,
             "the deleted cache's model unpinned")


def test_agent_keeps_its_store_through_an_apiserver_outage_and_catches_up(tmp_path, cluster, kube, agents):
    """30 s without an API server, as the issue asks: several watch retries (backoff caps at 5 s)."""
    node, group = unique("node"), unique("g")
    kube.node(node, {"g": group})
    kube.group(group, {"storageLimit": "1Gi", "nodeSelector": {"g": group}})
    first, second = unique("first"), unique("second")
    uri1 = model_dir(tmp_path, "kept")
    kube.cache(first, uri1, [group])
    agent = agents(node)
    kube.wait_node_state(first, node, DOWNLOADED)

    cluster.stop_apiserver()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert agent.proc.poll() is None
            assert agent.get("/healthz")[0] == 200
            time.sleep(1)
        assert key_for(uri1) in store_keys(tmp_path / f"store-{node}")
    finally:
        cluster.start_apiserver()

    kube.cache(second, model_dir(tmp_path, "new"), [group])
    kube.wait_node_state(second, node, DOWNLOADED)
    assert kube.status(first)["nodeStatus"] == {node: DOWNLOADED}


def test_sigterm_ends_a_download_promptly_and_restart_resumes_it(tmp_path, kube, agents, http_server_factory,
                                                                 fault_proxy):
    size = 8 * 1024 * 1024
    www = tmp_path / "www"
    write_tree(www, {"big.bin": blob(size, seed="resume")})
    server = http_server_factory(www)
    proxy = fault_proxy(server.base_url)
    proxy.add(Fault.stall(after=256 * 1024, seconds=120, path=r"big\.bin", method="GET", count=1))
    node, group, name = unique("node"), unique("g"), unique("resume")
    kube.node(node, {"g": group})
    kube.group(group, {"storageLimit": "1Gi", "nodeSelector": {"g": group}})
    uri = f"{proxy.url}/big.bin"
    kube.cache(name, uri, [group])
    env = {"MODELDEPOT_PART_SIZE": "1Mi", "MODELDEPOT_CONCURRENCY": "4", "MODELDEPOT_STALL_TIMEOUT": "120"}
    root = tmp_path / "store"
    agent = agents(node, root=root, env=env)
    kube.wait_node_state(name, node, DOWNLOADING)
    # Wait until the unstalled parts are in: 7 of the 8 ranged GETs have completed.
    wait_for(lambda: len([r for r in proxy.requests if r.method == "GET" and r.complete]) >= 7, 30,
             "the unstalled parts to arrive")
    time.sleep(0.5)

    took = agent.stop(signal.SIGTERM)
    assert took < 5, f"SIGTERM took {took:.1f}s with a download in flight"
    assert not (root / "models" / key_for(uri)).exists()  # nothing partial is published

    proxy.clear_faults()
    proxy.clear_log()
    agent2 = agents(node, root=root, env=env)
    kube.wait_node_state(name, node, DOWNLOADED)
    assert (root / "models" / key_for(uri) / "big.bin").read_bytes() == blob(size, seed="resume")
    fetched = requested_bytes([r for r in proxy.requests if r.method == "GET"], size)
    assert fetched < size / 2, f"restart fetched {fetched} of {size} bytes: it did not resume"
    assert agent2.metric("modeldepot_agent_downloads_in_flight") == 0


@pytest.mark.parametrize("bad_spec, why", [
    ({"modelSize": "1Gi", "nodeGroups": ["g"]}, "no sourceModelUri"),
    ({"sourceModelUri": "s3://b/m", "modelSize": "lots", "nodeGroups": ["g"]}, "modelSize not a quantity"),
    ({"sourceModelUri": "s3://b/m", "modelSize": "1Gi", "nodeGroups": []}, "no node groups"),
    ({"sourceModelUri": "not a uri", "modelSize": "1Gi", "nodeGroups": ["g"]}, "sourceModelUri without a scheme"),
])
def test_invalid_localmodelcache_is_rejected_with_422(kube, bad_spec, why):
    from kubernetes.client.rest import ApiException

    with pytest.raises(ApiException) as err:
        kube.custom.create_cluster_custom_object("modeldepot.io", "v1alpha1", "localmodelcaches", {
            "apiVersion": "modeldepot.io/v1alpha1", "kind": "LocalModelCache",
            "metadata": {"name": unique("bad")}, "spec": bad_spec})
    assert err.value.status == 422, why
