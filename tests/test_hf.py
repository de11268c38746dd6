"""hf:// downloads against a local Hub (tests/support/hfserver.py) that huggingface_hub itself accepts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import FAST_RETRY_ENV
from support.faultproxy import Fault
from support.hfserver import HubServer
from support.models import MiB, assert_tree_equal, blob, nested_tree, read_tree

from storage import download, verify
from storage.errors import AccessDeniedError, BadURIError, IntegrityError, NotFoundError
from storage.sources.hf import parse_hf_uri

TOKEN = "hf_reader_token_0123456789"


@pytest.fixture(scope="module")
def hub():
    server = HubServer(page_size=4)  # small pages: listings exercise the Link pagination
    server.commit("org/model", nested_tree())
    server.commit("org/gated", {"config.json": b"{}", "model.safetensors": blob(20_000, "g")},
                  gated=True, readers={TOKEN})
    server.add_token("hf_someone_else_0123456789")
    try:
        yield server
    finally:
        server.stop()


def hf_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {"HF_ENDPOINT": endpoint, **FAST_RETRY_ENV, **extra}


def test_uri_forms():
    assert parse_hf_uri("hf://org/repo") == ("org/repo", "main", "")
    assert parse_hf_uri("hf://org/repo:v1.0") == ("org/repo", "v1.0", "")
    assert parse_hf_uri("hf://org/repo@abc123/sub/dir") == ("org/repo", "abc123", "sub/dir")
    with pytest.raises(BadURIError):
        parse_hf_uri("hf://justonepart")


def test_hf_round_trip_records_the_commit_and_lfs_sha256(hub, tmp_path):
    dest = tmp_path / "dest"
    manifest = download("hf://org/model", dest, env=hf_env(hub.url))
    assert_tree_equal(dest, nested_tree())
    assert verify(dest) == []
    assert manifest.revision == hub.repos["org/model"].refs["main"]
    weights = manifest.by_path()["model.safetensors"]
    import hashlib

    assert weights.source["sha256"] == hashlib.sha256(nested_tree()["model.safetensors"]).hexdigest()
    assert (dest / "empty.txt").read_bytes() == b""


def test_hf_revision_pins_an_older_commit_in_both_spellings(hub, tmp_path):
    old = hub.commit("org/pinned", {"w.bin": b"old" * 5000, "README.md": b"v1"}, ref="v1")
    hub.commit("org/pinned", {"w.bin": b"new" * 5000, "README.md": b"v2"}, ref="main")
    for i, uri in enumerate(["hf://org/pinned:v1", f"hf://org/pinned@{old}"]):
        dest = tmp_path / str(i)
        manifest = download(uri, dest, env=hf_env(hub.url))
        assert manifest.revision == old
        assert_tree_equal(dest, {"w.bin": b"old" * 5000, "README.md": b"v1"})


def test_hf_subfolder_lands_at_the_destination_root(hub, tmp_path):
    dest = tmp_path / "dest"
    download("hf://org/model/tokenizer", dest, env=hf_env(hub.url))
    tree = nested_tree()
    assert_tree_equal(dest, {k[len("tokenizer/"):]: v for k, v in tree.items() if k.startswith("tokenizer/")})


def test_hf_matches_huggingface_hub_snapshot_download_byte_for_byte(hub, tmp_path):
    ours = tmp_path / "ours"
    download("hf://org/model", ours, env=hf_env(hub.url))
    code = ("from huggingface_hub import snapshot_download; import sys; "
            "snapshot_download('org/model', revision='main', endpoint=sys.argv[1], local_dir=sys.argv[2], "
            "cache_dir=sys.argv[3])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HOME=str(tmp_path / "hf-home"))
    done = subprocess.run([sys.executable, "-c", code, hub.url, str(tmp_path / "theirs"), str(tmp_path / "cache")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = {k: v for k, v in read_tree(tmp_path / "theirs").items() if not k.startswith(".cache/")}
    assert theirs == {k: v for k, v in read_tree(ours).items() if not k.startswith(".modeldepot/")}
    assert theirs == nested_tree()


def test_hf_missing_repo_says_so(hub, tmp_path):
    with pytest.raises(NotFoundError) as err:
        download("hf://org/nope", tmp_path / "dest", env=hf_env(hub.url))
    assert str(err.value).startswith("hf://org/nope: repository org/nope not found")
    assert "HF_TOKEN" in str(err.value)


def test_hf_missing_revision_names_it(hub, tmp_path):
    with pytest.raises(NotFoundError, match=r"revision 'no-such-branch' not found in org/model"):
        download("hf://org/model:no-such-branch", tmp_path / "dest", env=hf_env(hub.url))


def test_hf_missing_subfolder_is_not_found(hub, tmp_path):
    with pytest.raises(NotFoundError, match="not found"):
        download("hf://org/model/no/such/dir", tmp_path / "dest", env=hf_env(hub.url))


def test_hf_gated_repo_without_token_says_to_set_hf_token(hub, tmp_path):
    with pytest.raises(AccessDeniedError) as err:
        download("hf://org/gated", tmp_path / "dest", env=hf_env(hub.url))
    assert "gated" in str(err.value) and "HF_TOKEN" in str(err.value)


def test_hf_gated_repo_with_token_downloads_and_the_cdn_never_sees_it(hub, tmp_path):
    dest = tmp_path / "dest"
    download("hf://org/gated", dest, env=hf_env(hub.url, HF_TOKEN=TOKEN))
    assert (dest / "config.json").read_bytes() == b"{}"
    cdn = [h for m, p, h in hub.requests if p.startswith("/lfs-cdn/")]
    assert cdn and not any("Authorization" in h for h in cdn)


def test_hf_token_without_access_is_denied_and_never_printed(hub, tmp_path):
    other = "hf_someone_else_0123456789"
    with pytest.raises(AccessDeniedError) as err:
        download("hf://org/gated", tmp_path / "dest", env=hf_env(hub.url, HF_TOKEN=other))
    assert other not in str(err.value) and "accept its conditions" in str(err.value)
    bogus = "hf_not_a_real_token_987654321"
    with pytest.raises(AccessDeniedError) as err:
        download("hf://org/model", tmp_path / "dest", env=hf_env(hub.url, HF_TOKEN=bogus))
    assert bogus not in str(err.value) and "HF_TOKEN" in str(err.value)


def test_hf_reset_mid_file_resumes_by_range(hub, fault_proxy, tmp_path):
    data = blob(3 * MiB + 1, "big")
    hub.commit("org/big", {"model.safetensors": data, "config.json": b"{}"})
    proxy = fault_proxy(hub.cdn_base)
    hub.cdn_base, saved = proxy.url, hub.cdn_base
    try:
        proxy.add(Fault.reset(after=MiB, method="GET", path=r"^/lfs-cdn/", count=1))
        dest = tmp_path / "dest"
        download("hf://org/big", dest, env=hf_env(hub.url))
    finally:
        hub.cdn_base = saved
    assert (dest / "model.safetensors").read_bytes() == data
    gets = proxy.requests_for(r"^/lfs-cdn/")
    assert gets[0].fault == "reset"
    assert any((r.range_start or 0) >= MiB for r in gets[1:]), [r.range for r in gets]


def test_hf_corrupted_lfs_bytes_fail_the_sha256_check(hub, fault_proxy, tmp_path):
    hub.commit("org/corrupt", {"model.safetensors": blob(50_000, "c")})
    proxy = fault_proxy(hub.cdn_base)
    hub.cdn_base, saved = proxy.url, hub.cdn_base
    try:
        proxy.add(Fault.corrupt(at=100, method="GET", path=r"^/lfs-cdn/", count=10))
        with pytest.raises(IntegrityError, match="sha256"):
            download("hf://org/corrupt", tmp_path / "dest", env=hf_env(hub.url))
    finally:
        hub.cdn_base = saved
    assert not (tmp_path / "dest").exists()

