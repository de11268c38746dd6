"""Every file in manifests/ is a valid Kubernetes object, and a real API server accepts it."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from k8s.fixtures import install_crds

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
FILES = sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml")
CRDS = {yaml.safe_load(p.read_text())["spec"]["names"]["kind"]: yaml.safe_load(p.read_text())
        for p in (MANIFESTS / "crds").glob("*.yaml")}
OURS = "modeldepot.io/v1alpha1"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in FILES for d in docs(p)]


def _to_jsonschema(schema):
    """OpenAPI v3 (with Kubernetes extensions) -> JSON Schema, enough for our CRDs."""
    if isinstance(schema, list):
        return [_to_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _to_jsonschema(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if schema.get("nullable"):
        out.pop("nullable")
        out = {"anyOf": [out, {"type": "null"}]}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in schema:
        out["additionalProperties"] = False  # structural schemas prune unknown fields: flag them here
    return out


def test_kustomization_lists_files_that_exist():
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (MANIFESTS / resource).is_file(), resource
    listed = {str((MANIFESTS / r).resolve()) for r in kustomization["resources"]}
    for path in FILES:
        if "examples" not in path.parts:
            assert str(path.resolve()) in listed, f"{path} is not in kustomization.yaml"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_builtin_objects_pass_kubernetes_validate_strict(path):
    for doc in docs(path):
        if doc["apiVersion"] in (OURS, "serving.kserve.io/v1alpha1"):
            continue  # custom resources: checked against their CRD below
        kubernetes_validate.validate(doc, "1.30", strict=True)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_custom_resources_match_their_crd_schema(path):
    for doc in docs(path):
        if doc["apiVersion"] != OURS:
            continue
        schema = CRDS[doc["kind"]]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        jsonschema.validate(doc, _to_jsonschema(schema))


def test_crds_are_structural_with_status_subresource_and_printer_columns():
    for crd in CRDS.values():
        assert crd["spec"]["group"] == "modeldepot.io" and crd["spec"]["scope"] == "Cluster"
        version = crd["spec"]["versions"][0]
        assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
        assert version["additionalPrinterColumns"][-1]["name"] == "Age"
    columns = [c["name"] for c in CRDS["LocalModelCache"]["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:3] == ["Source", "Size", "Copies"]


def test_daemonset_runs_the_agent_locked_down():
    ds = next(d for _, d in all_docs() if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    assert agent["command"] == ["modeldepot", "agent"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in agent["env"]
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert agent["resources"]["requests"] and agent["resources"]["limits"]["memory"]
    sc = agent["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert any(v.get("hostPath") for v in pod["volumes"])


def test_rbac_grants_no_writes_to_specs_and_no_cluster_wide_secrets():
    rules = [r for _, d in all_docs() if d["kind"] == "ClusterRole" for r in d["rules"]]
    for rule in rules:
        if set(rule["resources"]) & {"localmodelcaches", "localmodelnodegroups"}:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
        assert "secrets" not in rule["resources"]
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]


# A stand-in for KServe's CRD, so its example can be applied to a cluster without KServe.
KSERVE_CSC_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "clusterstoragecontainers.serving.kserve.io"},
    "spec": {"group": "serving.kserve.io", "scope": "Cluster",
             "names": {"kind": "ClusterStorageContainer", "plural": "clusterstoragecontainers",
                       "singular": "clusterstoragecontainer", "listKind": "ClusterStorageContainerList"},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"spec": {"type": "object",
                                                           "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}


def test_every_manifest_is_accepted_by_the_apiserver(cluster):
    from kubernetes import client, dynamic, utils

    api = cluster.api_client()
    install_crds(api)
    try:
        client.ApiextensionsV1Api(api).create_custom_resource_definition(copy.deepcopy(KSERVE_CSC_CRD))
    except client.ApiException as exc:
        assert exc.status == 409
    dyn = dynamic.DynamicClient(api)
    ordered = sorted(all_docs(), key=lambda pd: (pd[1]["kind"] != "Namespace", pd[1]["kind"] == "CustomResourceDefinition"))
    for path, doc in ordered:
        if doc["kind"] == "CustomResourceDefinition":
            continue  # installed by install_crds from these very files
        if doc["apiVersion"] in (OURS, "serving.kserve.io/v1alpha1"):
            for _ in range(50):  # a just-created CRD takes a moment to appear in discovery
                try:
                    resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
                    break
                except Exception:  # noqa: BLE001 - ResourceNotFoundError until discovery refreshes
                    time.sleep(0.2)
                    dyn = dynamic.DynamicClient(api)
            resource.create(body=doc)
        else:
            utils.create_from_dict(api, doc)
        print(f"applied {doc['kind']}/{doc['metadata']['name']} from {path.relative_to(MANIFESTS)}")
