"""http(s):// single-file downloads against a real local HTTP server."""

from __future__ import annotations

import json

import pytest
from conftest import FAST_RETRY_ENV, requested_bytes
from support.models import MiB, assert_tree_equal, blob

from storage import download, verify
from storage.errors import AccessDeniedError, NotFoundError

DATA = blob(2 * MiB + 77, "http")


@pytest.fixture
def www(tmp_path):
    root = tmp_path / "www"
    (root / "models" / "m").mkdir(parents=True)
    (root / "models" / "m" / "model.bin").write_bytes(DATA)
    return root


def test_http_file_lands_as_basename_of_url_path(www, http_server_factory, tmp_path):
    server = http_server_factory(www)
    dest = tmp_path / "dest"
    manifest = download(server.url("models/m/model.bin"), dest, env=dict(FAST_RETRY_ENV))
    assert_tree_equal(dest, {"model.bin": DATA})
    assert [f.path for f in manifest.files] == ["model.bin"]
    assert verify(dest) == []


def test_http_query_string_is_kept_in_the_request(www, http_server_factory, tmp_path):
    server = http_server_factory(www)
    dest = tmp_path / "dest"
    download(server.url("models/m/model.bin?X-Sig=abc&v=2"), dest, env=dict(FAST_RETRY_ENV))
    assert_tree_equal(dest, {"model.bin": DATA})
    gets = [r for r in server.requests if r.method == "GET"]
    assert gets and all(r.query == "X-Sig=abc&v=2" for r in gets)


def test_http_file_in_ranged_parts(www, http_server_factory, tmp_path):
    server = http_server_factory(www)
    dest = tmp_path / "dest"
    download(server.url("models/m/model.bin"), dest, part_size=MiB, env=dict(FAST_RETRY_ENV))
    assert (dest / "model.bin").read_bytes() == DATA
    gets = [r for r in server.requests if r.method == "GET" and r.range != "bytes=0-0"]  # not the size probe
    assert len(gets) >= 3 and all(r.range for r in gets), [r.range for r in gets]
    assert requested_bytes(gets, len(DATA)) == len(DATA)


def test_http_404_is_not_found_after_one_request(www, http_server_factory, tmp_path):
    server = http_server_factory(www)
    dest = tmp_path / "dest"
    url = server.url("models/m/missing.bin")
    with pytest.raises(NotFoundError) as exc:
        download(url, dest, env=dict(FAST_RETRY_ENV))
    assert url in str(exc.value) and "\n" not in str(exc.value)
    assert len([r for r in server.requests if r.path.endswith("missing.bin")]) == 1
    assert not dest.exists()


def test_kserve_host_headers_env_is_sent(www, http_server_factory, tmp_path):
    server = http_server_factory(www, {"X-Token": "let-me-in"})
    dest = tmp_path / "dest"
    env = {**FAST_RETRY_ENV, "127.0.0.1-headers": json.dumps({"X-Token": "let-me-in"})}
    download(server.url("models/m/model.bin"), dest, env=env)
    assert_tree_equal(dest, {"model.bin": DATA})
    assert all(r.headers.get("x-token") == "let-me-in" for r in server.requests)


def _assert_one_try(server):
    """A refusal is not retried: one GET at most, plus at most one HEAD (presigned URLs refuse
    HEAD with 403, so falling back from HEAD to GET once is legitimate)."""
    methods = [r.method for r in server.requests]
    assert methods.count("GET") <= 1 and methods.count("HEAD") <= 1 and len(methods) >= 1, methods


def test_missing_auth_header_is_401_access_denied_after_one_request(www, http_server_factory, tmp_path):
    server = http_server_factory(www, {"X-Token": "let-me-in"})
    dest = tmp_path / "dest"
    with pytest.raises(AccessDeniedError):
        download(server.url("models/m/model.bin"), dest, env=dict(FAST_RETRY_ENV))
    _assert_one_try(server)
    assert not dest.exists()


def test_wrong_auth_header_is_403_access_denied_after_one_request(www, http_server_factory, tmp_path):
    server = http_server_factory(www, {"X-Token": "let-me-in"})
    dest = tmp_path / "dest"
    env = {**FAST_RETRY_ENV, "127.0.0.1-headers": json.dumps({"X-Token": "nope"})}
    with pytest.raises(AccessDeniedError):
        download(server.url("models/m/model.bin"), dest, env=env)
    _assert_one_try(server)
    assert not dest.exists()


def test_http_rerun_into_complete_dest_makes_no_get(www, http_server_factory, tmp_path):
    server = http_server_factory(www)
    dest = tmp_path / "dest"
    download(server.url("models/m/model.bin"), dest, env=dict(FAST_RETRY_ENV))
    server.clear()
    download(server.url("models/m/model.bin"), dest, env=dict(FAST_RETRY_ENV))
    # A one-byte probe (Range: bytes=0-0) is listing, not a transfer of object data.
    assert [r for r in server.requests if r.method == "GET" and r.range != "bytes=0-0"] == []
    assert verify(dest) == []


def test_url_secrets_are_not_written_to_the_manifest(www, http_server_factory, tmp_path):
    server = http_server_factory(www)
    secret = "SEKRETqueryT0ken55"
    dest = tmp_path / "dest"
    url = f"http://user:{secret}@127.0.0.1:{server.port}/models/m/model.bin?token={secret}&sig={secret}"
    download(url, dest, env=dict(FAST_RETRY_ENV))
    assert_tree_equal(dest, {"model.bin": DATA})
    for path in (dest / ".modeldepot").rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path
