"""Local paths, file:// and pvc://: hard links on the same filesystem, copies across filesystems."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import FAST_RETRY_ENV
from support.models import assert_tree_equal, nested_tree, write_tree

from storage import download, verify
from storage.errors import NotFoundError

SHM = Path("/dev/shm")


def _same_inode(a: Path, b: Path) -> bool:
    return a.stat().st_ino == b.stat().st_ino and a.stat().st_dev == b.stat().st_dev


def test_local_dir_on_same_filesystem_is_hard_linked(tmp_path):
    files = nested_tree()
    src = write_tree(tmp_path / "src", files)
    dest = tmp_path / "dest"
    download(str(src), dest, env=dict(FAST_RETRY_ENV))
    assert_tree_equal(dest, files)
    assert _same_inode(src / "model.safetensors", dest / "model.safetensors")
    assert _same_inode(src / "tokenizer" / "vocab.txt", dest / "tokenizer" / "vocab.txt")
    assert verify(dest) == []


def test_file_uri_is_the_same_as_a_path(tmp_path):
    files = {"a.bin": b"a", "d/b.bin": b"bb"}
    src = write_tree(tmp_path / "src", files)
    dest = tmp_path / "dest"
    download(src.as_uri(), dest, env=dict(FAST_RETRY_ENV))
    assert_tree_equal(dest, files)
    assert _same_inode(src / "d" / "b.bin", dest / "d" / "b.bin")


def test_local_single_file_lands_as_basename(tmp_path):
    src = write_tree(tmp_path / "src", {"w.bin": b"weights"})
    dest = tmp_path / "dest"
    download(str(src / "w.bin"), dest, env=dict(FAST_RETRY_ENV))
    assert_tree_equal(dest, {"w.bin": b"weights"})


@pytest.mark.skipif(
    not SHM.is_dir() or not os.access(SHM, os.W_OK) or SHM.stat().st_dev == Path("/tmp").stat().st_dev,
    reason="needs /dev/shm on another filesystem",
)
def test_local_dir_on_another_filesystem_is_copied(tmp_path):
    files = {"a.bin": b"a" * 1000, "d/b.bin": b"b" * 10}
    import tempfile

    with tempfile.TemporaryDirectory(dir=SHM) as shm:
        src = write_tree(Path(shm) / "src", files)
        dest = tmp_path / "dest"
        download(str(src), dest, env=dict(FAST_RETRY_ENV))
        assert_tree_equal(dest, files)
        assert (dest / "a.bin").stat().st_dev != (src / "a.bin").stat().st_dev
        (src / "a.bin").write_bytes(b"changed")  # a copy does not follow the source
    assert (dest / "a.bin").read_bytes() == b"a" * 1000
    assert verify(dest) == []


def test_pvc_uri_resolves_under_pvc_root(tmp_path):
    files = {"config.json": b"{}", "w/weights.bin": b"w" * 100}
    write_tree(tmp_path / "pvcs" / "my-claim" / "models" / "llm", files)
    dest = tmp_path / "dest"
    env = {**FAST_RETRY_ENV, "MODELDEPOT_PVC_ROOT": str(tmp_path / "pvcs")}
    download("pvc://my-claim/models/llm", dest, env=env)
    assert_tree_equal(dest, files)
    assert verify(dest) == []


def test_missing_local_path_is_not_found(tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(NotFoundError) as exc:
        download(str(tmp_path / "nope"), dest, env=dict(FAST_RETRY_ENV))
    assert str(tmp_path / "nope") in str(exc.value)
    assert not dest.exists()


def test_local_rerun_keeps_dest_verified(tmp_path):
    files = {"a.bin": b"a", "d/b.bin": b"bb"}
    src = write_tree(tmp_path / "src", files)
    dest = tmp_path / "dest"
    download(str(src), dest, env=dict(FAST_RETRY_ENV))
    download(str(src), dest, env=dict(FAST_RETRY_ENV))
    assert_tree_equal(dest, files)
    assert verify(dest) == []


def test_local_source_with_symlinks_like_the_hf_cache_yields_real_files(tmp_path):
    # huggingface_hub's cache: snapshots/<rev>/<file> are relative symlinks into blobs/.
    repo = tmp_path / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "aaa").write_bytes(b'{"a": 1}')
    (repo / "blobs" / "bbb").write_bytes(b"weights" * 100)
    snap = repo / "snapshots" / "0123abcd"
    (snap / "sub").mkdir(parents=True)
    (snap / "config.json").symlink_to("../../blobs/aaa")
    (snap / "sub" / "model.bin").symlink_to("../../../blobs/bbb")
    dest = tmp_path / "dest"
    download(str(snap), dest, env=dict(FAST_RETRY_ENV))
    assert_tree_equal(dest, {"config.json": b'{"a": 1}', "sub/model.bin": b"weights" * 100})
    assert not (dest / "config.json").is_symlink()
    assert verify(dest) == []
