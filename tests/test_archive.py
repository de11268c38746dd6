"""A single source file named .tar/.tar.gz/.tgz/.zip is extracted into DEST; hostile ones never are."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAST_RETRY_ENV, s3_env_for
from support.models import (
    HOSTILE_TAR_CASES,
    HOSTILE_ZIP_CASES,
    MiB,
    assert_tree_equal,
    blob,
    make_hostile_tar,
    make_hostile_zip,
    make_tar,
    make_zip,
)

from storage import download, verify
from storage.errors import UnsafeArchiveError
from storage.manifest import read_manifest

CONTENT = {
    "config.json": b'{"a": 1}',
    "weights/model.bin": blob(MiB + 3, "arch"),
    "weights/empty.bin": b"",
    "tok/vocab ü.txt": b"hello",
}
ABSOLUTE_TARGET = Path("/tmp/modeldepot-pwned-absolute")


def _build(kind: str, path: Path, files: dict[str, bytes]) -> Path:
    if kind == "zip":
        return make_zip(path, files)
    return make_tar(path, files, "w:gz" if kind in ("tar.gz", "tgz") else "w")


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "tgz", "zip"])
def test_good_archive_over_http_is_extracted_into_dest(kind, tmp_path, http_server):
    _build(kind, http_server.root / f"model.{kind}", CONTENT)
    dest = tmp_path / "dest"
    download(http_server.url(f"model.{kind}"), dest, env=dict(FAST_RETRY_ENV))
    assert_tree_equal(dest, CONTENT)  # the archive itself is not left in DEST
    assert verify(dest) == []
    assert sorted(f.path for f in read_manifest(dest).files) == sorted(CONTENT)


def test_good_archive_from_s3_exact_key_is_extracted(s3_client, bucket, s3_env, tmp_path):
    path = make_tar(tmp_path / "m.tar.gz", CONTENT, "w:gz")
    s3_client.put_object(Bucket=bucket, Key="archives/m.tar.gz", Body=path.read_bytes())
    dest = tmp_path / "dest"
    download(f"s3://{bucket}/archives/m.tar.gz", dest, env=s3_env)
    assert_tree_equal(dest, CONTENT)
    assert verify(dest) == []


def test_good_local_zip_is_extracted(tmp_path):
    src = make_zip(tmp_path / "m.zip", CONTENT)
    dest = tmp_path / "dest"
    download(str(src), dest, env=dict(FAST_RETRY_ENV))
    assert_tree_equal(dest, CONTENT)


def test_rerun_of_an_archive_makes_no_get(tmp_path, http_server):
    make_tar(http_server.root / "m.tar", CONTENT)
    dest = tmp_path / "dest"
    download(http_server.url("m.tar"), dest, env=dict(FAST_RETRY_ENV))
    http_server.clear()
    download(http_server.url("m.tar"), dest, env=dict(FAST_RETRY_ENV))
    assert [r for r in http_server.requests if r.method == "GET" and r.range != "bytes=0-0"] == []
    assert_tree_equal(dest, CONTENT)


def _assert_refused(uri: str, tmp_path: Path) -> None:
    ABSOLUTE_TARGET.unlink(missing_ok=True)
    parent = tmp_path / "a" / "b"
    parent.mkdir(parents=True)
    dest = parent / "dest"
    before = {p for p in tmp_path.rglob("*")}
    try:
        with pytest.raises(UnsafeArchiveError) as exc:
            download(uri, dest, env=dict(FAST_RETRY_ENV))
        assert "\n" not in str(exc.value)
        assert not dest.exists()
        assert not ABSOLUTE_TARGET.exists()
        escaped = [p for p in tmp_path.rglob("escaped*") if p not in before]
        assert escaped == [], escaped
    finally:
        ABSOLUTE_TARGET.unlink(missing_ok=True)


@pytest.mark.parametrize("case", HOSTILE_TAR_CASES)
@pytest.mark.parametrize("kind", ["tar", "tar.gz"])
def test_hostile_tar_is_refused_and_dest_absent(kind, case, tmp_path, http_server):
    make_hostile_tar(http_server.root / f"evil.{kind}", case, "w:gz" if kind == "tar.gz" else "w")
    _assert_refused(http_server.url(f"evil.{kind}"), tmp_path)


@pytest.mark.parametrize("case", HOSTILE_ZIP_CASES)
def test_hostile_zip_is_refused_and_dest_absent(case, tmp_path, http_server):
    make_hostile_zip(http_server.root / "evil.zip", case)
    _assert_refused(http_server.url("evil.zip"), tmp_path)


def test_hostile_tar_from_s3_is_refused(s3_client, bucket, s3_server, tmp_path):
    path = make_hostile_tar(tmp_path / "evil.tar", "dotdot")
    s3_client.put_object(Bucket=bucket, Key="evil.tar", Body=path.read_bytes())
    ABSOLUTE_TARGET.unlink(missing_ok=True)
    dest = tmp_path / "x" / "dest"
    dest.parent.mkdir()
    with pytest.raises(UnsafeArchiveError):
        download(f"s3://{bucket}/evil.tar", dest, env=s3_env_for(s3_server.endpoint))
    assert not dest.exists()


def test_tar_with_dot_slash_entries_is_extracted(tmp_path, http_server):
    # `tar -C dir -cf m.tar .` writes "./", "./config.json", ...: the most common hand-made tar.
    import io
    import tarfile

    with tarfile.open(http_server.root / "m.tar", "w") as tf:
        top = tarfile.TarInfo("./")
        top.type = tarfile.DIRTYPE
        tf.addfile(top)
        for rel, data in CONTENT.items():
            info = tarfile.TarInfo(f"./{rel}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    dest = tmp_path / "dest"
    download(http_server.url("m.tar"), dest, env=dict(FAST_RETRY_ENV))
    assert_tree_equal(dest, CONTENT)
    assert verify(dest) == []


def test_archive_with_an_internal_symlink_stays_inside_dest(tmp_path, http_server):
    import io
    import tarfile

    with tarfile.open(http_server.root / "m.tar", "w") as tf:
        info = tarfile.TarInfo("weights/model.bin")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"model"))
        link = tarfile.TarInfo("latest.bin")
        link.type = tarfile.SYMTYPE
        link.linkname = "weights/model.bin"
        tf.addfile(link)
    dest = tmp_path / "dest"
    try:
        download(http_server.url("m.tar"), dest, env=dict(FAST_RETRY_ENV))
    except UnsafeArchiveError:
        assert not dest.exists()  # refusing all links is a defensible policy
        return
    assert (dest / "weights" / "model.bin").read_bytes() == b"model"
    assert (dest / "latest.bin").resolve().is_relative_to(dest.resolve())
    assert verify(dest) == []
