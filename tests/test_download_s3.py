"""s3:// downloads against a real S3 server (SeaweedFS): layout, prefixes, markers, parts, env."""

from __future__ import annotations

import json

import pytest
from conftest import object_gets, s3_env_for
from support.models import MiB, assert_tree_equal, blob, nested_tree, upload_tree

from storage import download, verify
from storage.errors import NotFoundError
from storage.manifest import read_manifest


def test_s3_round_trip_of_a_nested_tree(s3_client, bucket, s3_env, tmp_path):
    files = nested_tree()
    upload_tree(s3_client, bucket, "models/llm", files)
    dest = tmp_path / "out" / "llm"
    manifest = download(f"s3://{bucket}/models/llm", dest, env=s3_env)
    assert_tree_equal(dest, files)
    assert verify(dest) == []
    assert sorted(f.path for f in manifest.files) == sorted(files)
    assert manifest.total_bytes == sum(len(v) for v in files.values())


def test_zero_byte_objects_are_kept(s3_client, bucket, s3_env, tmp_path):
    upload_tree(s3_client, bucket, "m", {"empty.txt": b"", "x/also-empty": b"", "w.bin": b"w"})
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/m", dest, env=s3_env)
    assert (dest / "empty.txt").read_bytes() == b""
    assert (dest / "x" / "also-empty").read_bytes() == b""
    assert verify(dest) == []


def test_manifest_records_source_sizes_and_checksums(s3_client, bucket, s3_env, tmp_path):
    files = {"a.bin": blob(1000, "a"), "b/c.bin": blob(2000, "c")}
    upload_tree(s3_client, bucket, "m", files)
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/m", dest, env=s3_env)
    manifest = read_manifest(dest)
    assert manifest is not None and manifest.source == f"s3://{bucket}/m"
    by_path = manifest.by_path()
    assert {p: e.size for p, e in by_path.items()} == {"a.bin": 1000, "b/c.bin": 2000}
    assert all(len(e.xxh3_128) == 32 for e in by_path.values())
    doc = json.loads((dest / ".modeldepot" / "manifest.json").read_text())
    assert doc["format"] == 1


def test_prefix_does_not_match_sibling_prefixes(s3_client, bucket, s3_env, tmp_path):
    upload_tree(
        s3_client,
        bucket,
        "",
        {
            "model/w.bin": b"right",
            "model/sub/x.bin": b"right too",
            "model-v2/w.bin": b"WRONG",
            "modelX.bin": b"WRONG",
            "model.json": b"WRONG",
        },
    )
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/model", dest, env=s3_env)
    assert_tree_equal(dest, {"w.bin": b"right", "sub/x.bin": b"right too"})


def test_prefix_with_trailing_slash_is_the_same_prefix(s3_client, bucket, s3_env, tmp_path):
    upload_tree(s3_client, bucket, "", {"model/w.bin": b"right", "model-v2/w.bin": b"WRONG"})
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/model/", dest, env=s3_env)
    assert_tree_equal(dest, {"w.bin": b"right"})


def test_whole_bucket_download(s3_client, bucket, s3_env, tmp_path):
    files = {"a.bin": b"a", "d/b.bin": b"b"}
    upload_tree(s3_client, bucket, "", files)
    dest = tmp_path / "dest"
    download(f"s3://{bucket}", dest, env=s3_env)
    assert_tree_equal(dest, files)


def test_exact_key_lands_as_its_basename(s3_client, bucket, s3_env, tmp_path):
    upload_tree(s3_client, bucket, "", {"models/m/weights.bin": b"weights", "models/m/other.bin": b"no"})
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/models/m/weights.bin", dest, env=s3_env)
    assert_tree_equal(dest, {"weights.bin": b"weights"})
    assert verify(dest) == []


def test_directory_markers_are_ignored(s3_client, bucket, s3_env, tmp_path):
    s3_client.put_object(Bucket=bucket, Key="m/", Body=b"")
    s3_client.put_object(Bucket=bucket, Key="m/emptydir/", Body=b"")
    s3_client.put_object(Bucket=bucket, Key="m/sub/", Body=b"")
    s3_client.put_object(Bucket=bucket, Key="m/sub/w.bin", Body=b"w")
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/m", dest, env=s3_env)
    assert_tree_equal(dest, {"sub/w.bin": b"w"})
    assert not (dest / "emptydir").is_file()
    assert verify(dest) == []


def test_missing_prefix_is_not_found_and_dest_absent(s3_client, bucket, s3_env, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(NotFoundError) as exc:
        download(f"s3://{bucket}/no/such/model", dest, env=s3_env)
    assert f"s3://{bucket}/no/such/model" in str(exc.value) and "\n" not in str(exc.value)
    assert not dest.exists()


def test_missing_bucket_is_not_found(s3_env, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(NotFoundError) as exc:
        download("s3://no-such-bucket-modeldepot/m", dest, env=s3_env)
    assert "s3://no-such-bucket-modeldepot/m" in str(exc.value)
    assert not dest.exists()


def test_large_object_is_fetched_in_ranged_parts(s3_client, bucket, s3_server, s3_proxy, tmp_path):
    data = blob(5 * MiB + 123, "big")
    s3_client.put_object(Bucket=bucket, Key="m/big.bin", Body=data)
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/m", dest, part_size=MiB, concurrency=4, env=s3_env_for(s3_proxy.url))
    assert (dest / "big.bin").read_bytes() == data
    gets = object_gets(s3_proxy, bucket, r"big\.bin$")
    assert len(gets) == 6, [g.range for g in gets]
    assert sorted(g.range_start for g in gets) == [i * MiB for i in range(6)]
    assert verify(dest) == []


def test_rerun_into_complete_dest_transfers_no_object_data(s3_client, bucket, s3_proxy, tmp_path):
    files = nested_tree()
    upload_tree(s3_client, bucket, "m", files)
    dest = tmp_path / "dest"
    env = s3_env_for(s3_proxy.url)
    first = download(f"s3://{bucket}/m", dest, env=env)
    assert len(object_gets(s3_proxy, bucket)) >= len([v for v in files.values() if v])
    s3_proxy.clear_log()
    second = download(f"s3://{bucket}/m", dest, env=env)
    assert object_gets(s3_proxy, bucket) == [], [r.path for r in object_gets(s3_proxy, bucket)]
    assert sorted((f.path, f.xxh3_128) for f in second.files) == sorted(
        (f.path, f.xxh3_128) for f in first.files
    )
    assert verify(dest) == []


def test_rerun_after_one_object_changed_fetches_only_that_object(s3_client, bucket, s3_proxy, tmp_path):
    upload_tree(s3_client, bucket, "m", {"a.bin": blob(1000, "a"), "b.bin": blob(1000, "b")})
    dest = tmp_path / "dest"
    env = s3_env_for(s3_proxy.url)
    download(f"s3://{bucket}/m", dest, env=env)
    s3_client.put_object(Bucket=bucket, Key="m/b.bin", Body=b"new contents")
    s3_proxy.clear_log()
    download(f"s3://{bucket}/m", dest, env=env)
    assert [r.path for r in object_gets(s3_proxy, bucket)] == [f"/{bucket}/m/b.bin"]
    assert (dest / "b.bin").read_bytes() == b"new contents"
    assert verify(dest) == []


def test_s3_endpoint_host_port_with_use_https_0(s3_client, s3_server, bucket, tmp_path):
    upload_tree(s3_client, bucket, "m", {"w.bin": b"w"})
    env = s3_env_for("")
    del env["AWS_ENDPOINT_URL"]
    env.update({"S3_ENDPOINT": f"127.0.0.1:{s3_server.port}", "S3_USE_HTTPS": "0"})
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/m", dest, env=env)
    assert_tree_equal(dest, {"w.bin": b"w"})


def test_anonymous_credential_downloads_without_keys(s3_client, s3_server, bucket, tmp_path):
    upload_tree(s3_client, bucket, "m", {"w.bin": b"w"})
    env = {
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "awsAnonymousCredential": "true",
    }
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/m", dest, env=env)
    assert_tree_equal(dest, {"w.bin": b"w"})


def test_concurrency_one_still_downloads_everything(s3_client, bucket, s3_env, tmp_path):
    files = nested_tree()
    upload_tree(s3_client, bucket, "m", files)
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/m", dest, concurrency=1, part_size=MiB, env=s3_env)
    assert_tree_equal(dest, files)
    assert verify(dest) == []


def test_download_of_another_uri_replaces_a_complete_dest(s3_client, bucket, s3_env, tmp_path):
    upload_tree(s3_client, bucket, "a", {"only-in-a.bin": b"a", "shared.json": b"A"})
    upload_tree(s3_client, bucket, "b", {"only-in-b.bin": b"b", "shared.json": b"B"})
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/a", dest, env=s3_env)
    download(f"s3://{bucket}/b", dest, env=s3_env)
    assert_tree_equal(dest, {"only-in-b.bin": b"b", "shared.json": b"B"})
    assert read_manifest(dest).source == f"s3://{bucket}/b"
    assert verify(dest) == []


def test_rerun_with_a_narrower_filter_leaves_dest_matching_its_manifest(s3_client, bucket, s3_env, tmp_path):
    upload_tree(s3_client, bucket, "m", {"a.json": b"{}", "b.bin": b"b"})
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/m", dest, env=s3_env)
    download(f"s3://{bucket}/m", dest, include=["*.json"], env=s3_env)
    assert verify(dest) == []
    assert_tree_equal(dest, {"a.json": b"{}"})


def test_missing_parent_directories_of_dest_are_created(s3_client, bucket, s3_env, tmp_path):
    upload_tree(s3_client, bucket, "m", {"w.bin": b"w"})
    dest = tmp_path / "a" / "b" / "c" / "dest"
    download(f"s3://{bucket}/m", dest, env=s3_env)
    assert_tree_equal(dest, {"w.bin": b"w"})


def test_prefix_holding_only_a_directory_marker_is_not_found(s3_client, bucket, s3_env, tmp_path):
    s3_client.put_object(Bucket=bucket, Key="m/", Body=b"")
    dest = tmp_path / "dest"
    with pytest.raises(NotFoundError):
        download(f"s3://{bucket}/m", dest, env=s3_env)
    assert not dest.exists()


def test_exact_key_of_a_zero_byte_object(s3_client, bucket, s3_env, tmp_path):
    s3_client.put_object(Bucket=bucket, Key="m/empty.bin", Body=b"")
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/m/empty.bin", dest, env=s3_env)
    assert_tree_equal(dest, {"empty.bin": b""})
    assert verify(dest) == []


@pytest.mark.parametrize("value", ["Tue, 24 Nov 2026 02:40:01 GMT", "2026-11-24T02:40:01.000Z",
                                   "2026-11-24T02:40:01+02:00", "2026-11-24T02:40:01", 1700000000, "1700000000"])
def test_fast_timestamp_parser_agrees_with_botocores(value):
    from botocore.utils import parse_timestamp

    from storage.sources.s3 import _parse_timestamp

    assert _parse_timestamp(value) == parse_timestamp(value)
