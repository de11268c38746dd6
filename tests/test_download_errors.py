"""Failing fast, one-line messages, no secrets, and atomic publish (DEST absent or unchanged)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import FAST_RETRY_ENV, s3_env_for
from support.faultproxy import Fault, s3_error
from support.models import MiB, assert_tree_equal, blob, upload_tree

from storage import download, verify
from storage.errors import AccessDeniedError, BadURIError, NotFoundError, StorageError

SECRET = "SEKRETd1stinct1veValue9f8e7d6c5b4a"


@pytest.mark.parametrize(
    "uri", ["s3://", "s3:///x", "ftp://x", "http://", "gopher://h/x", "s3://bucket name/x"]
)
def test_bad_uri_fails_fast_with_one_line(uri, tmp_path):
    dest = tmp_path / "dest"
    t0 = time.monotonic()
    with pytest.raises(BadURIError) as exc:
        download(uri, dest, env=dict(FAST_RETRY_ENV))
    assert time.monotonic() - t0 < 2
    msg = str(exc.value)
    assert msg and "\n" not in msg
    assert uri in msg
    assert not dest.exists()


def test_access_denied_on_listing_fails_after_one_request(s3_client, bucket, s3_proxy, tmp_path):
    upload_tree(s3_client, bucket, "m", {"w.bin": b"w"})
    s3_proxy.add(
        Fault.status(403, body=s3_error("AccessDenied"), method="GET", path=rf"^/{bucket}/?$", count=100)
    )
    dest = tmp_path / "dest"
    with pytest.raises(AccessDeniedError) as exc:
        download(f"s3://{bucket}/m", dest, env=s3_env_for(s3_proxy.url))
    assert f"s3://{bucket}/m" in str(exc.value) and "\n" not in str(exc.value)
    assert len([r for r in s3_proxy.requests if r.fault]) == 1
    assert not dest.exists()


def test_access_denied_on_object_fails_after_one_request(s3_client, bucket, s3_proxy, tmp_path):
    upload_tree(s3_client, bucket, "m", {"w.bin": blob(1000, "w"), "ok.bin": b"ok"})
    s3_proxy.add(
        Fault.status(403, body=s3_error("AccessDenied"), method="GET", path=r"/m/w\.bin$", count=100)
    )
    dest = tmp_path / "dest"
    with pytest.raises(AccessDeniedError) as exc:
        download(f"s3://{bucket}/m", dest, env=s3_env_for(s3_proxy.url))
    assert "\n" not in str(exc.value) and f"s3://{bucket}/m" in str(exc.value)
    assert len(s3_proxy.requests_for(r"/m/w\.bin$")) == 1
    assert not dest.exists()


def test_object_vanishing_after_listing_is_not_found_after_one_request(s3_client, bucket, s3_proxy, tmp_path):
    upload_tree(s3_client, bucket, "m", {"w.bin": blob(1000, "w")})
    s3_proxy.add(Fault.status(404, body=s3_error("NoSuchKey"), method="GET", path=r"/m/w\.bin$", count=100))
    dest = tmp_path / "dest"
    with pytest.raises(NotFoundError):
        download(f"s3://{bucket}/m", dest, env=s3_env_for(s3_proxy.url))
    assert len(s3_proxy.requests_for(r"/m/w\.bin$")) == 1
    assert not dest.exists()


def test_secret_key_never_appears_in_errors(s3_client, bucket, s3_proxy, tmp_path):
    upload_tree(s3_client, bucket, "m", {"w.bin": b"w"})
    s3_proxy.add(Fault.status(403, body=s3_error("AccessDenied", "denied"), method="GET", count=100))
    env = s3_env_for(s3_proxy.url, AWS_SECRET_ACCESS_KEY=SECRET, AWS_ACCESS_KEY_ID="AKIA" + SECRET[:12])
    with pytest.raises(StorageError) as exc:
        download(f"s3://{bucket}/m", tmp_path / "dest", env=env)
    assert SECRET not in str(exc.value) and SECRET not in repr(exc.value)
    with pytest.raises(StorageError) as exc:
        download(
            f"s3://{bucket}-missing/m",
            tmp_path / "dest2",
            env=s3_env_for(s3_proxy.url, AWS_SECRET_ACCESS_KEY=SECRET),
        )
    assert SECRET not in str(exc.value)


def test_userinfo_and_header_secrets_never_appear_in_errors(http_server_factory, tmp_path):
    (tmp_path / "www").mkdir()
    server = http_server_factory(tmp_path / "www", {"Authorization": "Bearer right"})
    env = {**FAST_RETRY_ENV, "127.0.0.1-headers": json.dumps({"Authorization": f"Bearer {SECRET}"})}
    with pytest.raises(StorageError) as exc:
        download(server.url("w.bin"), tmp_path / "d1", env=env)
    assert SECRET not in str(exc.value)
    url = f"http://user:{SECRET}@127.0.0.1:{server.port}/w.bin?token={SECRET}"
    with pytest.raises(StorageError) as exc:
        download(url, tmp_path / "d2", env=dict(FAST_RETRY_ENV))
    assert SECRET not in str(exc.value)


def test_failure_leaves_preexisting_empty_dest_empty(s3_client, bucket, s3_proxy, tmp_path):
    upload_tree(s3_client, bucket, "m", {"a.bin": b"a", "w.bin": blob(1000, "w")})
    s3_proxy.add(
        Fault.status(403, body=s3_error("AccessDenied"), method="GET", path=r"/m/w\.bin$", count=100)
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(AccessDeniedError):
        download(f"s3://{bucket}/m", dest, env=s3_env_for(s3_proxy.url))
    assert dest.is_dir() and list(dest.iterdir()) == []


def test_failure_leaves_a_complete_dest_unchanged(s3_client, bucket, s3_proxy, tmp_path):
    upload_tree(s3_client, bucket, "m", {"a.bin": b"a", "w.bin": b"old"})
    dest = tmp_path / "dest"
    env = s3_env_for(s3_proxy.url)
    download(f"s3://{bucket}/m", dest, env=env)
    s3_client.put_object(Bucket=bucket, Key="m/w.bin", Body=b"new content")
    s3_proxy.add(
        Fault.status(403, body=s3_error("AccessDenied"), method="GET", path=r"/m/w\.bin$", count=100)
    )
    with pytest.raises(AccessDeniedError):
        download(f"s3://{bucket}/m", dest, env=env)
    assert_tree_equal(dest, {"a.bin": b"a", "w.bin": b"old"})
    assert verify(dest) == []


def test_dest_is_absent_while_download_runs_and_staging_is_a_hidden_sibling(
    s3_client, bucket, s3_proxy, tmp_path
):
    upload_tree(s3_client, bucket, "m", {"small.bin": b"s", "big.bin": blob(2 * MiB, "big")})
    s3_proxy.add(Fault.stall(after=256 * 1024, seconds=1.5, method="GET", path=r"/m/big\.bin$", count=100))
    dest = tmp_path / "out" / "model"
    dest.parent.mkdir()
    env = s3_env_for(s3_proxy.url, MODELDEPOT_STALL_TIMEOUT="30")
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.setdefault("m", download(f"s3://{bucket}/m", dest, env=env))
    )
    worker.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(r.bytes_sent for r in s3_proxy.requests_for(r"big\.bin$")):
        time.sleep(0.02)
    time.sleep(0.3)
    during_dest = dest.exists()
    staging = tmp_path / "out" / ".model.modeldepot-staging"
    during_staging = staging.is_dir()
    worker.join(30)
    assert not worker.is_alive() and "m" in result
    assert not during_dest, "DEST existed before the download completed"
    assert during_staging, (
        f"no staging dir at {staging} while downloading: {list((tmp_path / 'out').iterdir())}"
    )
    assert verify(dest) == []
    assert not staging.exists(), "staging left behind after a successful download"
    leftovers = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".model.modeldepot-lock")
    assert leftovers == ["model"]


def test_dest_that_is_a_file_is_refused(s3_client, bucket, s3_env, tmp_path):
    upload_tree(s3_client, bucket, "m", {"w.bin": b"w"})
    dest = tmp_path / "dest"
    dest.write_bytes(b"i am a file")
    with pytest.raises(StorageError):
        download(f"s3://{bucket}/m", dest, env=s3_env)
    assert dest.read_bytes() == b"i am a file"


def test_two_concurrent_downloads_into_one_dest_end_verified(s3_client, bucket, s3_env, tmp_path):
    files = {f"f{i}.bin": blob(300_000, f"c{i}") for i in range(6)}
    upload_tree(s3_client, bucket, "m", files)
    dest = tmp_path / "dest"
    outcomes: list = []

    def run():
        try:
            download(f"s3://{bucket}/m", dest, env=s3_env)
            outcomes.append("ok")
        except StorageError as exc:  # a clear "another writer" refusal is acceptable
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert "ok" in outcomes, outcomes
    assert all(o == "ok" or "\n" not in str(o) for o in outcomes)
    assert_tree_equal(dest, files)
    assert verify(dest) == []
