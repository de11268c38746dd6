"""Durability without fsync: what a download written unsynced is trusted for, and after a reboot.

By default (MODELDEPOT_FSYNC=0) nothing is fdatasync'd; the manifest and the staging journal carry
the boot id, and a run in a later boot re-hashes before it trusts anything. A reboot is simulated
the way the engine sees one: the recorded boot id differs from the running kernel's.
"""

from __future__ import annotations

import json

import pytest
from conftest import object_gets, s3_env_for
from support.faultproxy import Fault
from support.models import assert_tree_equal, blob, upload_tree

from storage import download, verify
from storage.errors import TransientExhaustedError
from storage.manifest import BOOT_ID, manifest_path, read_manifest

FILES = {"a.bin": blob(300_000, "a"), "sub/b.bin": blob(200_000, "b"), "c.json": b'{"c": 1}'}


def _another_boot(dest):
    path = manifest_path(dest)
    doc = json.loads(path.read_text())
    assert doc["unsynced_boot"] == BOOT_ID
    doc["unsynced_boot"] = "0b0b0b0b-earlier-boot"
    path.write_text(json.dumps(doc))


def _flip_a_byte(path, at=1000):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))  # same size: only a re-hash can tell


@pytest.fixture
def model(s3_client, bucket):
    upload_tree(s3_client, bucket, "m", FILES)
    return f"s3://{bucket}/m"


def test_default_publish_is_marked_with_this_boot_and_fsync_1_is_not(model, s3_env, tmp_path):
    download(model, tmp_path / "fast", env=s3_env)
    assert read_manifest(tmp_path / "fast").unsynced_boot == BOOT_ID
    download(model, tmp_path / "durable", env={**s3_env, "MODELDEPOT_FSYNC": "1"})
    assert read_manifest(tmp_path / "durable").unsynced_boot is None


def test_after_a_reboot_an_intact_dest_is_rehashed_once_and_nothing_fetched(model, bucket, s3_proxy, tmp_path):
    env = s3_env_for(s3_proxy.url)
    dest = tmp_path / "dest"
    download(model, dest, env=env)
    _another_boot(dest)
    s3_proxy.clear_log()
    download(model, dest, env=env)
    assert object_gets(s3_proxy, bucket) == []
    assert_tree_equal(dest, FILES)
    # Read back from disk in this boot: the bytes are on disk, the mark is gone for good.
    assert read_manifest(dest).unsynced_boot is None


def test_after_a_reboot_only_torn_files_are_fetched_again(model, bucket, s3_proxy, tmp_path):
    env = s3_env_for(s3_proxy.url)
    dest = tmp_path / "dest"
    download(model, dest, env=env)
    _another_boot(dest)
    _flip_a_byte(dest / "sub" / "b.bin")
    s3_proxy.clear_log()
    download(model, dest, env=env)
    assert_tree_equal(dest, FILES)
    assert verify(dest) == []
    assert [r.path for r in object_gets(s3_proxy, bucket)] == [f"/{bucket}/m/sub/b.bin"]


def test_after_a_reboot_a_torn_dest_is_unpublished_even_if_the_refetch_fails(model, bucket, s3_proxy, tmp_path):
    env = s3_env_for(s3_proxy.url, MODELDEPOT_RETRIES="2")
    dest = tmp_path / "dest"
    download(model, dest, env=env)
    _another_boot(dest)
    _flip_a_byte(dest / "a.bin")
    s3_proxy.add(Fault.status(503, method="GET", path=r"/m/a\.bin$", count=100))
    with pytest.raises(TransientExhaustedError):
        download(model, dest, env=env)
    # No manifest claims the damaged tree is complete.
    assert read_manifest(dest) is None
    assert verify(dest)[0].startswith(".modeldepot/manifest.json: missing")
    s3_proxy.clear_faults()
    download(model, dest, env=env)
    assert_tree_equal(dest, FILES)


def test_verify_rehashes_an_unsynced_dest_from_an_earlier_boot_even_when_asked_for_sizes(model, s3_env, tmp_path):
    dest = tmp_path / "dest"
    download(model, dest, env=s3_env)
    _flip_a_byte(dest / "a.bin")
    assert verify(dest, full=False) == []  # same boot: the page cache is the truth, sizes suffice
    _another_boot(dest)
    problems = verify(dest, full=False)
    assert len(problems) == 1 and problems[0].startswith("a.bin: xxh3-128")


@pytest.mark.parametrize("fsync, refetched", [("0", True), ("1", False)])
def test_staged_files_from_an_earlier_boot_are_trusted_only_if_synced(fsync, refetched, model, bucket,
                                                                      s3_proxy, tmp_path):
    env = s3_env_for(s3_proxy.url, MODELDEPOT_RETRIES="2", MODELDEPOT_FSYNC=fsync)
    dest = tmp_path / "dest"
    s3_proxy.add(Fault.status(503, method="GET", path=r"/m/sub/b\.bin$", count=100))
    with pytest.raises(TransientExhaustedError):
        download(model, dest, concurrency=1, env=env)
    journal = tmp_path / ".dest.modeldepot-staging" / "journal"
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    assert any(e["event"] == "file" and e["path"] == "a.bin" for e in events)
    journal.write_text(journal.read_text().replace(f'"boot":"{BOOT_ID}"', '"boot":"0b0b-earlier-boot"'))
    s3_proxy.clear_faults()
    s3_proxy.clear_log()
    download(model, dest, concurrency=1, env=env)
    assert_tree_equal(dest, FILES)
    fetched = {r.path.rsplit("/", 1)[-1] for r in object_gets(s3_proxy, bucket)}
    assert ("a.bin" in fetched) is refetched
