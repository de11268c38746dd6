"""include/exclude globs and KServe's STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS."""

from __future__ import annotations

import json

import pytest
from support.models import assert_tree_equal, upload_tree

from storage import download, verify
from storage.manifest import read_manifest

FILES = {
    "config.json": b"{}",
    "model.safetensors": b"st",
    "pytorch_model.bin": b"pt",
    "sub/dir/extra.json": b"{}",
    "sub/dir/shard.safetensors": b"st2",
    "onnx/model.onnx": b"onnx",
}


@pytest.fixture
def model(s3_client, bucket):
    upload_tree(s3_client, bucket, "m", FILES)
    return f"s3://{bucket}/m"


def _only(*paths):
    return {p: FILES[p] for p in paths}


def _check(dest, expected):
    assert_tree_equal(dest, expected)
    assert sorted(f.path for f in read_manifest(dest).files) == sorted(expected)
    assert verify(dest) == []


def test_include_keeps_only_matching_files(model, s3_env, tmp_path):
    dest = tmp_path / "dest"
    download(model, dest, include=["*.safetensors"], env=s3_env)
    _check(dest, _only("model.safetensors", "sub/dir/shard.safetensors"))


def test_star_matches_across_directories(model, s3_env, tmp_path):
    dest = tmp_path / "dest"
    download(model, dest, include=["*.json"], env=s3_env)
    _check(dest, _only("config.json", "sub/dir/extra.json"))


def test_exclude_drops_matching_files(model, s3_env, tmp_path):
    dest = tmp_path / "dest"
    download(model, dest, exclude=["*.bin", "onnx/*"], env=s3_env)
    _check(dest, _only("config.json", "model.safetensors", "sub/dir/extra.json", "sub/dir/shard.safetensors"))


def test_include_and_exclude_combine(model, s3_env, tmp_path):
    dest = tmp_path / "dest"
    download(model, dest, include=["sub/*"], exclude=["*.json"], env=s3_env)
    _check(dest, _only("sub/dir/shard.safetensors"))


def test_allow_patterns_env_as_json_list(model, s3_env, tmp_path):
    dest = tmp_path / "dest"
    download(model, dest, env={**s3_env, "STORAGE_ALLOW_PATTERNS": json.dumps(["*.json", "*.onnx"])})
    _check(dest, _only("config.json", "sub/dir/extra.json", "onnx/model.onnx"))


def test_ignore_patterns_env_comma_separated(model, s3_env, tmp_path):
    dest = tmp_path / "dest"
    download(model, dest, env={**s3_env, "STORAGE_IGNORE_PATTERNS": "*.bin, *.onnx"})
    _check(dest, _only("config.json", "model.safetensors", "sub/dir/extra.json", "sub/dir/shard.safetensors"))


def test_filters_that_match_nothing_fail_without_publishing(model, s3_env, tmp_path):
    from storage.errors import StorageError

    dest = tmp_path / "dest"
    with pytest.raises(StorageError) as exc:
        download(model, dest, include=["*.gguf"], env=s3_env)
    assert model in str(exc.value)
    assert not dest.exists()
