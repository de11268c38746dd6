"""Which caches select a node, and how one node's entry merges into a shared cache status."""

from __future__ import annotations

from cacheagent.agent_status import merge_node
from cacheagent.reconcile import CacheState
from cacheagent.reconcile_select import desired_caches, group_selects, node_storage_limit


def group(**spec):
    return {"metadata": {"name": "g"}, "spec": spec}


def cache(name, groups, uri="s3://b/m"):
    return {"metadata": {"name": name}, "spec": {"sourceModelUri": uri, "modelSize": "1Gi", "nodeGroups": groups}}


def test_node_selector_needs_every_label():
    g = group(nodeSelector={"pool": "gpu", "zone": "a"})
    assert group_selects(g, {"pool": "gpu", "zone": "a", "x": "y"}, "n1")
    assert not group_selects(g, {"pool": "gpu"}, "n1")


def test_affinity_terms_are_ored_and_expressions_anded():
    g = group(nodeAffinity={"required": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]},
                              {"key": "spot", "operator": "DoesNotExist"}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]},
    ]}})
    assert group_selects(g, {"zone": "b"}, "n1")
    assert not group_selects(g, {"zone": "b", "spot": "true"}, "n1")
    assert group_selects(g, {"spot": "true"}, "special")
    assert not group_selects(g, {"zone": "c"}, "n1")


def test_kserve_persistent_volume_affinity_selects_nodes():
    g = group(storageLimit="1Gi", persistentVolumeSpec={"nodeAffinity": {"required": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpus", "operator": "Gt", "values": ["3"]}]}]}}})
    assert group_selects(g, {"gpus": "8"}, "n1")
    assert not group_selects(g, {"gpus": "2"}, "n1")


def test_a_cache_selects_the_node_when_any_of_its_groups_does():
    groups = {"a": group(nodeSelector={"zone": "a"}), "b": group(nodeSelector={"zone": "b"})}
    caches = {"c1": cache("c1", ["a"]), "c2": cache("c2", ["b"]), "c3": cache("c3", ["b", "a"]),
              "c4": cache("c4", ["missing"]), "bad": {"metadata": {"name": "bad"}, "spec": {"nodeGroups": ["a"]}}}
    wanted, broken = desired_caches(caches, groups, {"zone": "a"}, "n1")
    assert sorted(wanted) == ["c1", "c3"]
    assert list(broken) == ["bad"]


def test_storage_limit_is_the_smallest_of_the_selecting_groups():
    groups = {"a": group(storageLimit="10Gi"), "b": group(storageLimit="2Gi", nodeSelector={"z": "1"}),
              "c": group(storageLimit="1Gi", nodeSelector={"z": "2"})}
    assert node_storage_limit(groups, {"z": "1"}, "n") == 2 * 1024**3
    assert node_storage_limit({}, {}, "n") is None


def test_each_node_merges_only_its_entry_and_copies_follow():
    s = merge_node({}, "n1", CacheState("NodeDownloaded"))
    s = merge_node(s, "n2", CacheState("NodeDownloadError", "boom"))
    s = merge_node(s, "n3", CacheState("NodeDownloading"))
    assert s["nodeStatus"] == {"n1": "NodeDownloaded", "n2": "NodeDownloadError", "n3": "NodeDownloading"}
    assert s["copies"] == {"available": 1, "total": 3, "failed": 1}
    conds = {c["type"]: c for c in s["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["DownloadFailed"]["message"] == "n2: boom" and "message" in conds["Ready"]
    s = merge_node(s, "n2", None)
    s = merge_node(s, "n3", CacheState("NodeDownloaded"))
    assert s["copies"] == {"available": 2, "total": 2, "failed": 0} and s["nodeErrors"] == {}
    assert {c["type"]: c["status"] for c in s["conditions"]} == {"Ready": "True", "DownloadFailed": "False"}
