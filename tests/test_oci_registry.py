"""modelcar against a real registry (Debian's docker-registry on 127.0.0.1): push, pull, auth.

Peers: skopeo and oras read what we push; the oci:// source reads it back byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.registry import PASSWORD, USER, DockerRegistry, ProxyBehaviour, RegistryProxy

from oci.auth import Credentials
from oci.build import build
from oci.errors import RegistryAuthError, RegistryNotFoundError
from oci.layout import Layout
from oci.pull import pull
from oci.push import inspect, push
from oci.registry import RegistryClient
from storage.errors import AccessDeniedError, NotFoundError
from storage.sources.oci import OciSource

MiB = 1 << 20


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with DockerRegistry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    with DockerRegistry(tmp_path_factory.mktemp("auth-registry"), htpasswd=True) as reg:
        yield reg


@pytest.fixture
def model(tmp_path) -> Path:
    root = tmp_path / "model"
    (root / "nested").mkdir(parents=True)
    (root / "weights.bin").write_bytes(os.urandom(2 * MiB + 123))
    (root / "config.json").write_text('{"a": 1}')
    (root / "nested" / "vocab.txt").write_text("a\nb\n")
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".modeldepot" not in p.parts}


def insecure_env(**extra) -> dict[str, str]:
    return {"KSERVE_OCI_INSECURE_REGISTRY": "true", "HOME": "/nonexistent", **extra}


def built(model: Path, tmp_path: Path, ref: str, **kw):
    return build(model, tag=ref, output_layout=tmp_path / "layout", large_file_threshold=MiB, **kw)


def test_push_then_skopeo_inspect_sees_our_manifest_digest(registry, model, tmp_path):
    ref = f"{registry.host}/models/skopeo:v1"
    b = built(model, tmp_path, ref)
    result = push(b.layout, ref, insecure=True, env=insecure_env())
    assert result.digest == b.digest
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout)["Digest"] == b.digest


def test_skopeo_copy_of_our_image_is_identical(registry, model, tmp_path):
    ref = f"{registry.host}/models/copy:v1"
    b = built(model, tmp_path, ref, compression="gzip")
    push(b.layout, ref, insecure=True, env=insecure_env())
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'copied'}:v1"],
                   capture_output=True, text=True, check=True)
    assert Layout(tmp_path / "copied").resolve("v1")["digest"] == b.digest


def test_second_push_uploads_no_blob(registry, model, tmp_path):
    ref = f"{registry.host}/models/again:v1"
    b = built(model, tmp_path, ref)
    first = push(b.layout, ref, insecure=True, env=insecure_env())
    assert len(first.uploaded) == 1 + len(json.loads(Layout(b.layout).read_blob(b.digest))["layers"])
    second = push(b.layout, ref, insecure=True, env=insecure_env())
    assert second.uploaded == [] and len(second.skipped) == len(first.uploaded)
    assert second.digest == first.digest


def test_round_trip_build_push_oci_source_download_is_byte_for_byte(registry, model, tmp_path):
    ref = f"{registry.host}/models/roundtrip:v1"
    b = built(model, tmp_path, ref, busybox="/bin/busybox", compression="zstd")
    push(b.layout, ref, insecure=True, env=insecure_env())
    revision = pull(ref, tmp_path / "dest", env=insecure_env())
    assert revision == b.digest
    assert files_of(tmp_path / "dest") == files_of(model)
    record = json.loads((tmp_path / "dest" / ".modeldepot" / "manifest.json").read_text())
    assert record["revision"] == b.digest and record["source"] == f"oci://{ref}"


def test_oci_source_lists_one_unpackable_layer_per_image_layer(registry, model, tmp_path):
    ref = f"{registry.host}/models/listing:v1"
    b = built(model, tmp_path, ref, compression="gzip")
    push(b.layout, ref, insecure=True, env=insecure_env())
    source = OciSource(f"oci://{ref}", insecure_env())
    try:
        listing = source.list()
        layers = json.loads(Layout(b.layout).read_blob(b.digest))["layers"]
        assert listing.revision == b.digest
        assert [(f.key, f.size, f.unpack, f.unpack_prefix) for f in listing.files] == [
            (x["digest"], x["size"], "tar+gzip", "models/") for x in layers]
        assert all(f.checksums == {"sha256": f.key[7:]} for f in listing.files)
        f = listing.files[-1]
        whole = b"".join(source.read(f))
        assert len(whole) == f.size
        assert b"".join(source.read(f, 1000, 5000)) == whole[1000:5000]
        assert b"".join(source.read(f, 7)) == whole[7:]
    finally:
        source.close()


def test_oci_source_names_a_missing_tag_as_not_found(registry):
    source = OciSource(f"oci://{registry.host}/models/nothing-here:v9", insecure_env())
    with pytest.raises(NotFoundError) as err:
        source.list()
    assert "models/nothing-here" in str(err.value) and "check the repository" in str(err.value)


def test_modelpack_artifact_pulled_back_by_oras(registry, model, tmp_path):
    import oras.client

    ref = f"{registry.host}/models/modelpack:v1"
    b = built(model, tmp_path, ref, format="modelpack")
    push(b.layout, ref, insecure=True, env=insecure_env())
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    manifest = client.get_manifest(ref)
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    paths = sorted(x["annotations"]["org.cncf.model.filepath"] for x in manifest["layers"])
    assert paths == ["config.json", "nested/vocab.txt", "weights.bin"]
    for layer in manifest["layers"]:
        out = tmp_path / "oras" / layer["digest"][7:]
        client.download_blob(ref, layer["digest"], str(out))
        assert out.read_bytes() == Layout(b.layout).read_blob(layer["digest"])
    # And the oci:// source gives the files at their ModelPack paths.
    pull(ref, tmp_path / "dest", env=insecure_env())
    assert files_of(tmp_path / "dest") == files_of(model)


# -- auth --------------------------------------------------------------------------------------

def docker_config(tmp_path: Path, host: str, password: str = PASSWORD) -> Path:
    import base64

    path = tmp_path / "docker-config.json"
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


def test_basic_auth_with_credentials_from_registry_auth_file(auth_registry, model, tmp_path):
    ref = f"{auth_registry.host}/models/private:v1"
    b = built(model, tmp_path, ref)
    env = insecure_env(REGISTRY_AUTH_FILE=str(docker_config(tmp_path, auth_registry.host)))
    assert push(b.layout, ref, insecure=True, env=env).digest == b.digest
    # KServe's variable name finds the same file for the oci:// source.
    kserve_env = insecure_env(KSERVE_OCI_DOCKER_CONFIG=env["REGISTRY_AUTH_FILE"])
    pull(ref, tmp_path / "dest", env=kserve_env)
    assert files_of(tmp_path / "dest") == files_of(model)


def test_anonymous_push_to_an_auth_registry_asks_for_a_login(auth_registry, model, tmp_path):
    ref = f"{auth_registry.host}/models/private:v2"
    b = built(model, tmp_path, ref)
    with pytest.raises(RegistryAuthError, match="login"):
        push(b.layout, ref, insecure=True, env=insecure_env())


def test_wrong_password_is_access_denied_and_never_echoed(auth_registry, model, tmp_path):
    ref = f"{auth_registry.host}/models/private:v3"
    b = built(model, tmp_path, ref)
    bad = "wrong-Pa55word-xyz"
    with pytest.raises(AccessDeniedError) as err:
        push(b.layout, ref, insecure=True, credentials=Credentials(USER, bad), env=insecure_env())
    assert bad not in str(err.value) and bad not in repr(err.value)


def test_cli_push_reads_the_password_from_stdin(auth_registry, model, tmp_path):
    ref = f"{auth_registry.host}/models/cli:v1"
    b = built(model, tmp_path, ref)
    run = subprocess.run([str(Path(os.sys.executable).parent / "modelcar"), "push", str(b.layout), ref, "--insecure",
                          "--username", USER, "--password-stdin"], input=PASSWORD + "\n", capture_output=True,
                         text=True, env={**os.environ, "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert b.digest in run.stdout and PASSWORD not in run.stdout + run.stderr


def test_bearer_token_auth_from_the_challenge(registry, model, tmp_path):
    with RegistryProxy(registry.port, ProxyBehaviour(bearer=True)) as proxy:
        ref = f"{proxy.host}/models/bearer:v1"
        b = built(model, tmp_path, ref)
        push(b.layout, ref, insecure=True, credentials=Credentials(USER, PASSWORD), env=insecure_env())
        assert proxy.seen("GET") and any(s.path == "/token" and s.status == 200 for s in proxy.log)
        pull(ref, tmp_path / "dest", env=insecure_env(REGISTRY_AUTH_FILE=str(docker_config(tmp_path, proxy.host))))
        assert files_of(tmp_path / "dest") == files_of(model)


def test_bearer_token_refused_is_access_denied(registry, model, tmp_path):
    with RegistryProxy(registry.port, ProxyBehaviour(bearer=True)) as proxy:
        ref = f"{proxy.host}/models/bearer:v2"
        source = OciSource(f"oci://{ref}", insecure_env())
        with pytest.raises(AccessDeniedError, match="token service refused"):
            source.list()


# -- uploads as registries make them -----------------------------------------------------------

def chunky_client(host: str, chunk: int = 256 * 1024) -> RegistryClient:
    return RegistryClient(host, insecure=True, env=insecure_env(), chunk_size=chunk)


def pushed_bytes_match(registry, ref: str, b, tmp_path: Path, model: Path) -> None:
    pull(ref.replace(ref.split("/")[0], registry.host), tmp_path / "check", env=insecure_env())
    assert files_of(tmp_path / "check") == files_of(model)


def test_large_blobs_go_in_chunks(registry, model, tmp_path):
    with RegistryProxy(registry.port) as proxy:
        ref = f"{proxy.host}/models/chunks:v1"
        b = built(model, tmp_path, ref)
        push(b.layout, ref, client=chunky_client(proxy.host))
        patches = proxy.seen("PATCH")
        assert len(patches) >= 8 and all(p.length <= 256 * 1024 for p in patches)
    pushed_bytes_match(registry, ref, b, tmp_path, model)


def test_upload_resumes_from_the_range_the_registry_reports_after_a_dropped_connection(registry, model, tmp_path):
    with RegistryProxy(registry.port, ProxyBehaviour(lose_patch={3})) as proxy:
        ref = f"{proxy.host}/models/resume:v1"
        b = built(model, tmp_path, ref)
        push(b.layout, ref, client=chunky_client(proxy.host))
        patches = proxy.seen("PATCH")
        assert patches[2].status == -1
        # The upload URL was asked how far it got, and the same chunk was sent again from there.
        status_gets = [s for s in proxy.log if s.method == "GET" and "/blobs/uploads/" in s.path]
        assert len(status_gets) == 1 and status_gets[0].status == 204
        assert patches[3].content_range == patches[2].content_range
        assert len({p.path for p in patches}) == 1  # one upload session throughout
    pushed_bytes_match(registry, ref, b, tmp_path, model)


def test_upload_restarts_when_the_session_cannot_continue_after_a_partial_chunk(registry, model, tmp_path):
    # distribution signs the offset into Location; once half a chunk landed unseen, that session is
    # dead and a fresh one is the only way forward.
    with RegistryProxy(registry.port, ProxyBehaviour(drop_patch={3})) as proxy:
        ref = f"{proxy.host}/models/restart:v1"
        b = built(model, tmp_path, ref)
        push(b.layout, ref, client=chunky_client(proxy.host))
        assert proxy.seen("PATCH")[2].status == -1
        assert len([s for s in proxy.seen("POST") if s.status == 202]) >= 2
    pushed_bytes_match(registry, ref, b, tmp_path, model)


def test_body_size_cap_makes_chunks_small(registry, tmp_path):
    model = tmp_path / "big"
    model.mkdir()
    (model / "w.bin").write_bytes(os.urandom(9 * MiB))
    with RegistryProxy(registry.port, ProxyBehaviour(max_body=4 * MiB)) as proxy:
        ref = f"{proxy.host}/models/ghcr-like:v1"
        b = built(model, tmp_path, ref)
        push(b.layout, ref, client=chunky_client(proxy.host, chunk=16 * MiB))
        assert any(s.status == 413 for s in proxy.log)
        assert all(p.length <= 4 * MiB for p in proxy.seen("PATCH") if p.status != 413)
    pushed_bytes_match(registry, ref, b, tmp_path, model)


def test_refused_chunked_upload_falls_back_to_one_put(registry, model, tmp_path):
    with RegistryProxy(registry.port, ProxyBehaviour(refuse_chunks=True)) as proxy:
        ref = f"{proxy.host}/models/gar-like:v1"
        b = built(model, tmp_path, ref)
        push(b.layout, ref, client=chunky_client(proxy.host))
        big_puts = [s for s in proxy.seen("PUT") if s.length > 2 * MiB]
        assert len(big_puts) == 1 and big_puts[0].status == 201
    pushed_bytes_match(registry, ref, b, tmp_path, model)


def test_patch_answered_201_relative_locations_and_chunk_min_length(registry, model, tmp_path):
    behaviour = ProxyBehaviour(patch_201=True, relative_location=True, chunk_min_length=512 * 1024)
    with RegistryProxy(registry.port, behaviour) as proxy:
        ref = f"{proxy.host}/models/ecr-like:v1"
        b = built(model, tmp_path, ref)
        push(b.layout, ref, client=chunky_client(proxy.host))
        patches = proxy.seen("PATCH")
        assert patches and all(p.status == 201 for p in patches)
        assert all(p.length >= 512 * 1024 for p in patches[:-1])
        # The upload URL's query (the registry's signed _state) was sent back as given.
        assert all("_state=" in p.query for p in patches)
    pushed_bytes_match(registry, ref, b, tmp_path, model)


def test_inspect_reads_a_registry_image_and_a_layout(registry, model, tmp_path):
    ref = f"{registry.host}/models/inspect:v1"
    b = built(model, tmp_path, ref)
    push(b.layout, ref, insecure=True, env=insecure_env())
    remote = inspect(ref, insecure=True, env=insecure_env())
    local = inspect(f"oci:{b.layout}:v1")
    assert remote["digest"] == local["digest"] == b.digest
    assert remote["config"]["rootfs"] == local["config"]["rootfs"]


def test_push_to_a_missing_layout_tag_is_a_layout_error(registry, model, tmp_path):
    from oci.errors import LayoutError

    b = built(model, tmp_path, f"{registry.host}/models/x:v1")
    with pytest.raises(LayoutError, match="no image tagged"):
        push(f"oci:{b.layout}:nope", f"{registry.host}/models/x:v1", insecure=True, env=insecure_env())


def test_pull_of_a_missing_blob_is_not_found(registry):
    client = RegistryClient(registry.host, insecure=True, env=insecure_env())
    with pytest.raises(RegistryNotFoundError):
        list(client.read_blob("models/none", "sha256:" + "0" * 64))


# -- the engine, the init container, base images and mounts -----------------------------------

def test_storage_initializer_downloads_an_oci_uri_and_a_second_run_fetches_no_blob(registry, model, tmp_path):
    with RegistryProxy(registry.port) as proxy:
        ref = f"{proxy.host}/models/init:v1"
        b = built(model, tmp_path, ref, compression="gzip")
        push(b.layout, ref, insecure=True, env=insecure_env())
        exe = str(Path(os.sys.executable).parent / "storage-initializer")
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KSERVE_OCI_INSECURE_REGISTRY": "true"}
        for _ in range(2):
            run = subprocess.run([exe, f"oci://{ref}", str(tmp_path / "dest")], capture_output=True, text=True, env=env)
            assert run.returncode == 0, run.stderr
        assert files_of(tmp_path / "dest") == files_of(model)
        blob_gets = [s for s in proxy.seen("GET") if "/blobs/sha256:" in s.path]
        assert len(blob_gets) == len(json.loads(Layout(b.layout).read_blob(b.digest))["layers"])


def test_cross_repository_mount_copies_no_bytes(registry, model, tmp_path):
    with RegistryProxy(registry.port) as proxy:
        b = built(model, tmp_path, f"{proxy.host}/team-a/model:v1")
        push(b.layout, f"{proxy.host}/team-a/model:v1", insecure=True, env=insecure_env())
        result = push(b.layout, f"{proxy.host}/team-b/model:v1", insecure=True, env=insecure_env(),
                      mount_from="team-a/model")
        assert result.uploaded == [] and len(result.mounted) == len(result.mounted + result.skipped) > 0
        assert not [s for s in proxy.seen("PATCH") + proxy.seen("PUT") if "team-b" in s.path and "blobs" in s.path]


def test_base_image_from_a_registry(registry, model, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "marker").write_text("base")
    base_ref = f"{registry.host}/bases/busybox:1"
    base = build(tiny, tag=base_ref, output_layout=tmp_path / "base", busybox="/bin/busybox")
    push(base.layout, base_ref, insecure=True, env=insecure_env())
    b = build(model, tag=f"{registry.host}/models/on-base:v1", output_layout=tmp_path / "o", base=base_ref,
              insecure=True, env=insecure_env())
    base_layers = json.loads(Layout(base.layout).read_blob(base.digest))["layers"]
    layers = json.loads(Layout(b.layout).read_blob(b.digest))["layers"]
    assert [x["digest"] for x in layers[: len(base_layers)]] == [x["digest"] for x in base_layers]
    assert all(Layout(b.layout).has_blob(x["digest"], x["size"]) for x in layers)


def test_cli_pull_and_inspect(registry, model, tmp_path):
    ref = f"{registry.host}/models/cli-pull:v1"
    b = built(model, tmp_path, ref)
    push(b.layout, ref, insecure=True, env=insecure_env())
    exe = str(Path(os.sys.executable).parent / "modelcar")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    run = subprocess.run([exe, "pull", ref, str(tmp_path / "dest"), "--insecure"], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr
    assert files_of(tmp_path / "dest") == files_of(model)
    run = subprocess.run([exe, "inspect", ref, "--insecure"], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and json.loads(run.stdout)["digest"] == b.digest
    run = subprocess.run([exe, "inspect", f"{registry.host}/models/cli-pull:missing", "--insecure"],
                         capture_output=True, text=True, env=env)
    assert run.returncode != 0 and run.stderr.count("\n") == 1 and "not found" in run.stderr


def test_oci_image_through_the_node_store_is_deduplicated_and_served_offline(registry, model, tmp_path):
    from cacheagent.initializer_hook import download_via_cache
    from cacheagent.store import Store

    ref = f"{registry.host}/models/cached:v1"
    b = built(model, tmp_path, ref, compression="gzip")
    push(b.layout, ref, insecure=True, env=insecure_env())
    store = Store(tmp_path / "store")
    record = store.ensure(f"oci://{ref}", env=insecure_env())
    published = tmp_path / "store" / "models" / record.key
    assert files_of(published) == files_of(model)
    # The same weights under a second tag are stored once: one blob, linked from both models.
    ref2 = f"{registry.host}/models/cached:v2"
    push(b.layout, ref2, insecure=True, env=insecure_env())
    second = store.ensure(f"oci://{ref2}", env=insecure_env())
    weights = (tmp_path / "store" / "models" / second.key / "weights.bin").stat()
    assert weights.st_ino == (published / "weights.bin").stat().st_ino and weights.st_nlink >= 3
    # A hit materializes DEST from the store, keeping the image digest as the revision.
    manifest = download_via_cache(f"oci://{ref}", tmp_path / "dest", tmp_path / "store", env=insecure_env())
    assert manifest.revision == b.digest and files_of(tmp_path / "dest") == files_of(model)
